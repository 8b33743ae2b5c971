"""End-to-end: the `tfmm` command on tiny data."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tfmm.cli import main
from tfmm.cli_parser import build_parser, config_from_args


def _train_args(demo_data, tiny_bert, run_dir, *extra):
    return ["train", "--data", demo_data["train"], "--val-data", demo_data["val"], "--output-dir", run_dir,
            "--text-encoder", f"keras_nlp:{tiny_bert}", "--image-weights", "none", "--image-size", "32",
            "--sequence-length", "8", "--projection-dim", "16", "--hidden-dim", "16", "--epochs", "1",
            "--batch-size", "8", *extra]


def test_flags_override_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  fusion: sum\n  dropout: 0.3\ntrain:\n  epochs: 7\n")
    args = build_parser().parse_args(["train", "--data", "x.csv", "--output-dir", "r", "--config", str(cfg),
                                      "--epochs", "2", "--freeze-text"])
    config = config_from_args(args)
    assert (config.model.fusion, config.model.dropout, config.train.epochs) == ("sum", 0.3, 2)
    assert config.model.freeze_text is True and config.model.freeze_image is None  # not given: the preset decides


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(cli_trained_run, demo_data, tmp_path, capsys):
    # `tfmm train` ran once for the session (conftest.cli_trained_run, shared with the export tests).
    run_dir = cli_trained_run["run_dir"]
    assert cli_trained_run["code"] == 0
    assert "run directory: " in cli_trained_run["stdout"]

    assert main(["evaluate", "--model", run_dir, "--data", demo_data["test"], "--report-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "per class:" in out
    metrics = json.load(open(tmp_path / "rep" / "metrics.json"))
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix", "n_examples"):
        assert key in metrics
    assert metrics["n_examples"] == len(pd.read_csv(demo_data["test"]))
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_examples"]

    preds = str(tmp_path / "preds.jsonl")
    assert main(["predict", "--model", run_dir, "--data", demo_data["test"], "--output", preds, "--top-k", "3"]) == 0
    assert f"wrote 18 prediction(s) to {preds}" in capsys.readouterr().out
    lines = [json.loads(line) for line in open(preds)]
    truth = pd.read_csv(demo_data["test"])["label"].tolist()
    assert [r["row"] for r in lines] == list(range(len(truth)))
    assert [r["true_label"] for r in lines] == truth
    assert all(len(r["labels"]) == 3 and r["scores"] == sorted(r["scores"], reverse=True) for r in lines)

    image = os.path.join(os.path.dirname(demo_data["test"]), pd.read_csv(demo_data["test"])["image"][0])
    assert main(["predict", "--model", run_dir, "--image", image, "--text", "a red one"]) == 0
    single = json.loads(capsys.readouterr().out.strip())
    assert single["row"] == 0 and len(single["labels"]) == 5 and "true_label" not in single


def test_bad_manifest_exits_2_with_rows(demo_data, tiny_bert, tmp_path, capsys):
    df = pd.read_csv(demo_data["train"])
    df.loc[2, "image"] = "images/gone.png"
    bad = os.path.join(os.path.dirname(demo_data["train"]), "cli_bad.csv")
    df.to_csv(bad, index=False)
    args = _train_args(demo_data, tiny_bert, str(tmp_path / "r"))
    args[args.index("--data") + 1] = bad
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tfmm train: error: 1 problem(s) in 1 bad row(s)" in err and "row 2: " in err and "images/gone.png: file not found" in err
    assert main(["evaluate", "--model", str(tmp_path / "nothing"), "--data", demo_data["test"]]) == 2
    assert "is not a finished tfmm run: config.yaml is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_help_lists_commands_and_examples(capsys):
    # One fresh process for the console entry point (most of its time is importing TensorFlow);
    # the subcommand's help comes from the same parser, in this process.
    out = subprocess.run([sys.executable, "-m", "tfmm.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "evaluate", "predict", "demo"):
        assert command in out
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    train_help = capsys.readouterr().out
    assert "examples:" in train_help and "--skip-bad-rows" in train_help and "--image-weights" in train_help


@pytest.mark.slow
def test_demo_small_run_separates_fused_from_baselines(demo_run):
    # run_demo(epochs=1, n_train=90) ran once for the session (conftest.demo_run); the MiniLM
    # export test serves its fused run.
    results = demo_run
    assert set(results["metrics"]) == {"fused", "image-only", "text-only"}
    assert all(os.path.exists(os.path.join(d, "model.keras")) for d in results["run_dirs"].values())
    # Text alone can only know the colour: at most 1/3 of the 9 colour+shape labels.
    assert results["metrics"]["text-only"]["accuracy"] <= 0.45
