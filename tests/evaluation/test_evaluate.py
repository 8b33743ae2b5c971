"""Evaluation: metrics equal scikit-learn's, report files and plots, modality ablation, CLI.

Most tests use a hand-built "rule" model whose answer is known in advance (brightness of
the image + length of the caption), so the ablation has an exact expected outcome and no
training is needed.
"""

import csv
import json
import os

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from tfmm import plots
from tfmm.cli import main
from tfmm.config import RunConfig, save_config
from tfmm.data.manifest import read_manifest, save_labels
from tfmm.evaluation import reports
from tfmm.evaluation.evaluate import evaluate, predict
from tfmm.models.text import TEXT_INPUTS, load_text_preprocessor
from tfmm.run_dir import CONFIG_FILE, LABELS_FILE, LoadedRun, MODEL_FILE, TOKENIZER_DIR, load_run

SIZE, SEQ = 32, 8
LONG, SHORT = "red red red red red red red red red", "red"
FOUR = ["bright long", "bright short", "dark long", "dark short"]


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def assert_png(path, min_bytes=5000, min_side=200):
    """A readable PNG of non-trivial size."""
    assert os.path.getsize(path) > min_bytes, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= min_side, img.size
        img.verify()


# ---------------------------------------------------------------- metrics vs scikit-learn


# ---------------------------------------------------------------- plots and report files


def test_plots_are_valid_pngs(tmp_path):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    assert_png(plots.save_png(plots.confusion_matrix_figure(cm, ["a", "b", "c"]), str(tmp_path / "cm.png")))
    y, s = np.array([0, 1, 1, 0, 1]), np.array([0.1, 0.8, 0.4, 0.5, 0.9])
    fpr, tpr, _ = skm.roc_curve(y, s)
    assert_png(plots.save_png(plots.curves_figure({"yes": (fpr, tpr, 0.8)}, kind="roc"), str(tmp_path / "roc.png")))
    hist = {"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.3, 0.6, 0.8],
            "val_accuracy": [0.2, 0.5, 0.7]}
    assert_png(plots.save_png(plots.training_curves_figure(hist), str(tmp_path / "curves.png")))
    fig = plots.examples_figure(np.full((2, 8, 8, 3), 200.0), ["a caption", "another"], ["a", "b"], [0.9, 0.4],
                                ["a", "a"])
    png = plots.figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        plots.confusion_matrix_figure([[1, 2], [3, 4]], ["a", "b", "c"])
    with pytest.raises(ValueError, match="no 'loss'"):
        plots.training_curves_figure({"accuracy": [1.0]})


def test_ablation_summary_and_tables():
    full = {"n_examples": 4, "accuracy": 1.0, "f1_macro": 0.9, "roc_auc": None}
    results = {"full": full, "image_blanked": {"accuracy": 0.25, "f1_macro": 0.1},
               "text_blanked": {"accuracy": 1.0, "f1_macro": 0.9}}
    ab = reports.ablation_summary(results, blanking={"image": "black"})
    assert ab["drop"]["image_blanked"] == pytest.approx({"accuracy": 0.75, "f1_macro": 0.8})
    assert ab["drop"]["text_blanked"] == {"accuracy": 0.0, "f1_macro": 0.0}
    assert "roc_auc" not in ab["metrics"]["full"]  # undefined in the full result: left out
    text = reports.format_ablation(ab)
    assert "0.2500 (-0.7500)" in text and "image blanked: black" in text


# ---------------------------------------------------------------- a rule model with known answers


def _rule_model(task: str) -> keras.Model:
    """Image brightness b and caption length l (both in [-1, 1]) decide the class.

    classification (FOUR): logits for bright/dark x long/short; binary: P(bright).
    """
    inputs = {"image": keras.Input((SIZE, SIZE, 3), name="image")}
    inputs.update({k: keras.Input((SEQ,), dtype="int32", name=k) for k in TEXT_INPUTS})
    b = 2.0 * keras.ops.mean(inputs["image"], axis=[1, 2, 3]) / 255.0 - 1.0
    length = keras.ops.mean(keras.ops.cast(inputs["padding_mask"], "float32"), axis=1)
    unused = 0.0 * keras.ops.cast(inputs["token_ids"][:, 0] + inputs["segment_ids"][:, 0], "float32")
    l = 2.0 * length - 1.0 + unused
    if task == "binary":
        return keras.Model(inputs, keras.ops.sigmoid(5.0 * b)[:, None])
    logits = keras.ops.stack([b + l, b - l, -b + l, -b - l], axis=1) * 5.0
    return keras.Model(inputs, keras.ops.softmax(logits, axis=1))


def _write_data(folder) -> str:
    """Eight rows: every bright/dark x long/short combination twice."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, (shade, caption) in enumerate([(s, c) for s in ("bright", "dark") for c in ("long", "short")] * 2):
        name = f"{i}.png"
        Image.new("RGB", (SIZE, SIZE), (255,) * 3 if shade == "bright" else (0,) * 3).save(os.path.join(folder, name))
        rows.append({"image": name, "text": LONG if caption == "long" else SHORT, "label": f"{shade} {caption}"})
    path = os.path.join(folder, "test.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def rule_run(tmp_path, tiny_bert):
    """A complete run directory holding the rule model (classification over FOUR)."""
    return _make_run(str(tmp_path / "run"), tiny_bert, "classification", FOUR)


def _make_run(run_dir, tiny_bert, task, labels) -> str:
    config = RunConfig().replace(
        data={"image_size": SIZE, "sequence_length": SEQ},
        model={"task": task, "text_encoder": f"keras_nlp:{tiny_bert}", "num_classes": len(labels)},
    )
    os.makedirs(run_dir)
    save_config(config, os.path.join(run_dir, CONFIG_FILE))
    save_labels(labels, os.path.join(run_dir, LABELS_FILE))
    load_text_preprocessor(config.model.text_encoder, SEQ).save(os.path.join(run_dir, TOKENIZER_DIR))
    _rule_model(task).save(os.path.join(run_dir, MODEL_FILE))
    return run_dir


def test_evaluate_writes_report_equal_to_sklearn(rule_run, tmp_path):
    data = _write_data(str(tmp_path / "data"))
    report = str(tmp_path / "report")
    m = evaluate(rule_run, data, report_dir=report)
    run = load_run(rule_run)
    manifest = read_manifest(data, run.config.data)
    scores = np.asarray(run.model.predict(run.dataset(manifest), verbose=0))
    y_true = [FOUR.index(v) for v in manifest.frame["label"]]
    y_pred = scores.argmax(axis=1)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["accuracy"] == 1.0 and m["n_examples"] == 8

    assert sorted(os.listdir(report)) == ["confusion_matrix.png", "metrics.json", "per_class.csv"]
    assert _read_json(os.path.join(report, "metrics.json")) == m
    with open(os.path.join(report, "per_class.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == FOUR
    assert [int(r["support"]) for r in rows] == [2, 2, 2, 2]
    assert float(rows[0]["f1"]) == pytest.approx(m["per_class"][FOUR[0]]["f1"])
    assert_png(os.path.join(report, "confusion_matrix.png"))


def test_ablation_shows_each_modality_drop(rule_run, tmp_path):
    data = _write_data(str(tmp_path / "data"))
    report = str(tmp_path / "report")
    m = evaluate(rule_run, data, report_dir=report, ablate=True)
    ab = _read_json(os.path.join(report, "ablation.json"))
    assert ab == m["ablation"]
    assert "ablation" not in _read_json(os.path.join(report, "metrics.json"))
    # Black image: every row reads "dark"; empty caption ([CLS][SEP]): every row reads "short".
    assert ab["metrics"]["full"]["accuracy"] == 1.0
    assert ab["metrics"]["image_blanked"]["accuracy"] == 0.5
    assert ab["metrics"]["text_blanked"]["accuracy"] == 0.5
    assert ab["drop"]["image_blanked"]["accuracy"] == pytest.approx(0.5)
    assert ab["drop"]["text_blanked"]["f1_macro"] == pytest.approx(1.0 - 1 / 3)  # 2 of 4 classes at F1 2/3
    assert "black" in ab["blanking"]["image"] and "[CLS] [SEP]" in ab["blanking"]["text"]


def test_ablation_mean_pixel(rule_run, tmp_path):
    data = _write_data(str(tmp_path / "data"))
    m = evaluate(rule_run, data, report_dir=str(tmp_path / "r"), ablate=True, blank_image="mean")
    assert "127.5" in m["ablation"]["blanking"]["image"]  # half white, half black
    with pytest.raises(ValueError, match="blank_image must be one of"):
        evaluate(rule_run, data, report_dir=str(tmp_path / "r"), ablate=True, blank_image="noise")


def test_binary_report_has_roc_and_pr(tmp_path, tiny_bert):
    run_dir = _make_run(str(tmp_path / "run"), tiny_bert, "binary", ["dark", "bright"])
    data = _write_data(str(tmp_path / "data"))
    frame = pd.read_csv(data)
    frame["label"] = [v.split()[0] for v in frame["label"]]
    # Flip two labels so that the AUCs are below 1.
    frame.loc[[0, 1], "label"] = "dark"
    frame.to_csv(data, index=False)
    report = str(tmp_path / "report")
    m = evaluate(run_dir, data, report_dir=report)
    run = load_run(run_dir)
    p = np.asarray(run.model.predict(run.dataset(read_manifest(data, run.config.data)),
                                     verbose=0))[:, 0]
    y = (frame["label"] == "bright").astype(int).to_numpy()
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, (p > 0.5).astype(int), average="macro"))
    for name in ("roc_curve.png", "pr_curve.png", "confusion_matrix.png"):
        assert_png(os.path.join(report, name))


def test_cli_evaluate_ablate_prints_tables(rule_run, tmp_path, capsys):
    data = _write_data(str(tmp_path / "data"))
    report = str(tmp_path / "report")
    assert main(["evaluate", "--model", rule_run, "--data", data, "--report-dir", report, "--ablate"]) == 0
    out = capsys.readouterr().out
    assert "f1_macro" in out and "bright long" in out
    assert "image_blanked" in out and "text_blanked" in out and "0.5000 (-0.5000)" in out
    assert sorted(os.listdir(report)) == ["ablation.json", "confusion_matrix.png", "metrics.json", "per_class.csv"]


# ---------------------------------------------------------------- predict


def test_cli_predict_jsonl_format(rule_run, tmp_path):
    data = _write_data(str(tmp_path / "data"))
    out = str(tmp_path / "preds.jsonl")
    assert main(["predict", "--model", rule_run, "--data", data, "--output", out, "--top-k", "2"]) == 0
    with open(out, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    truth = list(pd.read_csv(data)["label"])
    assert [r["row"] for r in lines] == list(range(8))
    for rec, label in zip(lines, truth):
        assert list(rec) == ["row", "labels", "scores", "true_label"]
        assert len(rec["labels"]) == 2 and rec["scores"] == sorted(rec["scores"], reverse=True)
        assert rec["labels"][0] == label == rec["true_label"]  # the rule model is always right

    unlabeled = str(tmp_path / "data" / "unlabeled.csv")
    pd.read_csv(data).drop(columns=["label"]).to_csv(unlabeled, index=False)
    records = predict(rule_run, unlabeled, k=10)
    assert "true_label" not in records[0] and len(records[0]["labels"]) == 4


def test_evaluate_accepts_loaded_run(rule_run, tmp_path):
    run = load_run(rule_run)
    assert isinstance(run, LoadedRun)
    m = evaluate(run, _write_data(str(tmp_path / "d")), report_dir=str(tmp_path / "r"))
    assert m["accuracy"] == 1.0
