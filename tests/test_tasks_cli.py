"""Matching, multilabel and contrastive end to end: train, evaluate, predict (CLI and API)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import tfmm
from tfmm.cli import main
from tfmm.run_dir import THRESHOLDS_FILE
from tfmm.tasks import dual_encoder, get_task
from tfmm.tasks.zero_shot import zero_shot_scores
from tfmm.tasks.thresholds import load_thresholds

def _args(tiny_bert, *extra):
    # Frozen encoders: these tests check the task plumbing; tracing VGG16's and BERT's
    # gradients and optimizer updates would triple their runtime.
    return ["--text-encoder", f"keras_nlp:{tiny_bert}", "--image-weights", "none", "--image-size", "32",
            "--sequence-length", "8", "--projection-dim", "16", "--hidden-dim", "16", "--epochs", "1",
            "--batch-size", "8", "--freeze-image", "--freeze-text", *extra]


@pytest.mark.slow
def test_matching_cli_with_generated_negatives(task_run, task_data, tiny_bert, tmp_path, capsys):
    # `tfmm train --task matching --negatives 1` on positive pairs (tests/task_runs.py)
    run, data = task_run("matching").run_dir, task_data("matching")
    saved = json.load(open(os.path.join(run, THRESHOLDS_FILE)))
    assert saved["labels"] == ["1"] and saved["tuned_on"] == "validation data"
    assert os.listdir(os.path.join(run, "logs"))  # TensorBoard
    assert "val_auc" in json.load(open(os.path.join(run, "history.json")))
    capsys.readouterr()

    assert main(["evaluate", "--model", run, "--data", data["val"], "--report-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "matching: accuracy" in out and "ROC-AUC" in out and "per class:" in out
    metrics = json.load(open(tmp_path / "rep" / "metrics.json"))
    assert metrics["generated_negatives"] == 8 and metrics["n_examples"] == 16 and metrics["n_positive"] == 8
    assert metrics["threshold"] == pytest.approx(saved["thresholds"][0])
    assert 0.0 <= metrics["roc_auc"] <= 1.0 and {"accuracy", "f1", "confusion_matrix", "f1_macro"} <= set(metrics)

    image = os.path.join(os.path.dirname(data["val"]), pd.read_csv(data["val"])["image"][0])
    assert main(["predict", "--model", run, "--image", image, "--text", "a red one"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0.0 <= record["match_score"] <= 1.0
    assert record["match"] == (record["match_score"] >= metrics["threshold"])

    assert main(["predict", "--model", run, "--data", data["val"], "--zero-shot-labels", "red,blue"]) == 2
    assert "zero-shot labels need a run trained with --task contrastive" in capsys.readouterr().err
    assert main(["train", "--data", data["val"], "--output-dir", str(tmp_path / "x"), "--task", "matching",
                 *_args(tiny_bert)]) == 2
    assert "missing column(s) ['label']" in capsys.readouterr().err


@pytest.mark.slow
def test_multilabel_thresholds_metrics_and_predicted(task_run, task_data, tmp_path):
    # `tfmm train --task multilabel` on "red|circle"-style labels (tests/task_runs.py)
    result, manifests = task_run("multilabel"), task_data("multilabel")
    labels = ["blue", "circle", "green", "red", "square", "triangle"]
    assert result.labels == labels
    thresholds = load_thresholds(result.run_dir, labels)
    assert thresholds.shape == (6,) and ((thresholds > 0) & (thresholds < 1)).all()

    metrics = tfmm.evaluate(result.run_dir, manifests["val"], report_dir=str(tmp_path / "report"))
    assert metrics["task"] == "multilabel" and metrics["n_examples"] == 8
    assert set(metrics["per_class"]) == set(labels)
    assert {"f1_micro", "f1_macro", "hamming_loss"} <= set(metrics)
    assert metrics["per_class"]["red"]["threshold"] == pytest.approx(thresholds[3])

    records = tfmm.predict(result.run_dir, manifests["val"], k=6)
    from tfmm.run_dir import load_run

    run = load_run(result.run_dir)
    scores = run.predict_scores(tfmm.read_manifest(manifests["val"]))
    for rec, row in zip(records, scores):
        assert rec["predicted"] == [label for label, s, t in zip(labels, row, thresholds) if s >= t]
        assert rec["true_label"].count("|") == 1 and len(rec["labels"]) == 6


@pytest.mark.slow
def test_contrastive_cli_retrieval_and_zero_shot_use_the_prompt(task_run, task_data, tmp_path, capsys):
    # `tfmm train --task contrastive --epochs 2` on positive pairs (tests/task_runs.py)
    run, data = task_run("contrastive").run_dir, task_data("contrastive")
    history = json.load(open(os.path.join(run, "history.json")))
    assert "val_recall_at_1" in history and len(history["loss"]) == 2
    capsys.readouterr()

    report = str(tmp_path / "report")
    assert main(["evaluate", "--model", run, "--data", data["val"], "--report-dir", report]) == 0
    assert "image_to_text" in capsys.readouterr().out
    metrics = json.load(open(os.path.join(report, "metrics.json")))
    for direction in ("image_to_text", "text_to_image"):
        assert [0 <= metrics[f"{direction}_recall@{k}"] <= 1 for k in (1, 5, 10)] == [True] * 3
        assert metrics[f"{direction}_recall@10"] >= metrics[f"{direction}_recall@1"]
    assert metrics["n_examples"] == 8 and metrics["temperature"] > 0

    image = os.path.join(os.path.dirname(data["val"]), pd.read_csv(data["val"])["image"][0])
    zero_shot = ["predict", "--model", run, "--image", image, "--zero-shot-labels", "red,green,blue"]
    assert main(zero_shot + ["--prompt", "a picture of something {}"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert sorted(record["labels"]) == ["blue", "green", "red"]
    assert record["prompts"][record["labels"].index("red")] == "a picture of something red"

    # The scores are those of the image against the embedded prompts, at the learned temperature.
    loaded = tfmm.load_run(run)
    from tfmm.data.images import decode_image

    pixels = decode_image(open(image, "rb").read(), 32)[None]
    image_emb = dual_encoder.image_embedding_model(loaded.model).predict(pixels, verbose=0)
    prompts = ["a picture of something red", "a picture of something green", "a picture of something blue"]
    import tensorflow as tf

    prompt_emb = dual_encoder.text_embedding_model(loaded.model).predict(loaded.preprocessor(tf.constant(prompts)), verbose=0)
    expected = zero_shot_scores(image_emb, prompt_emb, dual_encoder.logit_scale(loaded.model))[0]
    got = dict(zip(record["labels"], record["scores"]))
    np.testing.assert_allclose([got[c] for c in ("red", "green", "blue")], expected, atol=1e-5)
    assert main(zero_shot + ["--prompt", "painted {}"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert dict(zip(other["labels"], other["scores"])) != pytest.approx(got)

    # The raw-input functions the export adds as embed_image / embed_text signatures.
    task = get_task("contrastive")
    endpoints = task.serving_endpoints(loaded, task.serving_outputs(loaded))
    (embed_image, image_spec), (embed_text, text_spec) = endpoints["embed_image"], endpoints["embed_text"]
    from_bytes = tf.function(embed_image, input_signature=image_spec)(tf.constant([open(image, "rb").read()]))
    np.testing.assert_allclose(from_bytes["embedding"], image_emb, atol=1e-5)
    from_text = tf.function(embed_text, input_signature=text_spec)(tf.constant(prompts))
    np.testing.assert_allclose(from_text["embedding"], prompt_emb, atol=1e-5)
    empty = tf.function(embed_text, input_signature=text_spec)(tf.constant([], tf.string))
    assert empty["embedding"].shape == (0, 16)  # an empty batch gives no rows

    preds = str(tmp_path / "emb.jsonl")
    assert main(["predict", "--model", run, "--data", data["val"], "--output", preds]) == 0
    rows = [json.loads(line) for line in open(preds)]
    assert len(rows) == 8 and "true_label" not in rows[0]
    a, b = np.array(rows[0]["image_embedding"]), np.array(rows[0]["text_embedding"])
    assert a.shape == (16,) and np.linalg.norm(a) == pytest.approx(1, abs=1e-5)
    assert rows[0]["similarity"] == pytest.approx(float(a @ b), abs=1e-5)
    assert main(["predict", "--model", run, "--image", image, "--prompt", "a {}"]) == 2
    assert "--prompt needs --zero-shot-labels" in capsys.readouterr().err


_MIRRORED = textwrap.dedent("""
    import os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tfmm.config import RunConfig
    from tfmm.tasks import get_task
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = {"image_features": rng.normal(size=(64, 8)).astype("float32"),
         "text_features": rng.normal(size=(64, 8)).astype("float32")}
    targets = {"matching": (rng.random((64, 1)) < 0.5).astype("float32"),
               "contrastive": np.stack([np.arange(64), np.arange(64)], 1).astype("float32")}
    for task, y in targets.items():
        with strategy.scope():
            cfg = RunConfig().replace(model={"task": task, "num_classes": 2, "projection_dim": 8, "hidden_dim": 8})
            head = get_task(task).build_head(cfg, {k: 8 for k in x})
            head.compile(optimizer="adam", loss=get_task(task).loss(cfg), metrics=get_task(task).metrics(cfg))
        loss = head.fit(x, y, batch_size=16, epochs=2, verbose=0).history["loss"]
        print(task, strategy.num_replicas_in_sync, loss[-1])
        assert np.isfinite(loss).all(), (task, loss)
""")


@pytest.mark.slow
def test_pair_task_heads_train_under_mirrored_strategy():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, root], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matching 2 " in proc.stdout and "contrastive 2 " in proc.stdout
