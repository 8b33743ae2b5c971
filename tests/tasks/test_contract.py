"""The contract every task in ``TASKS`` keeps: it trains on tiny data, evaluates, predicts and
exports, through the same calls, with the keys its own methods declare.

A new task gets this test by its entry in ``TASKS``.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfmm
from tests.conftest import make_tiny_config
from tfmm.serving import saved_model
from tfmm.serving.export import export_for_serving
from tfmm.tasks import TASKS, Task, get_task

# The keys of each task's predicted rows, besides "row" and "true_label".
PREDICTION_KEYS = {
    "classification": {"labels", "scores"},
    "binary": {"labels", "scores"},
    "multilabel": {"labels", "scores", "predicted"},
    "matching": {"match_score", "match"},
    "contrastive": {"similarity", "image_embedding", "text_embedding"},
}


def _manifests(demo_data, name):
    """Train (24 rows) and validation (8 rows) manifests of the demo images, labeled for
    ``name``, beside the demo manifests (image paths stay relative)."""
    frames = {}
    for split, n in (("train", 24), ("val", 8)):
        df = pd.read_csv(demo_data[split]).head(n)
        colour = df["label"].str.split(" ").str[0]
        if name == "binary":
            df["label"] = np.where(colour == "red", "red", "other")
        elif name == "multilabel":
            df["label"] = df["label"].str.replace(" ", "|")  # "red|circle": colour and shape
        elif name in ("matching", "contrastive"):
            df = df.drop(columns=["label"])  # positive pairs; matching makes negatives
        frames[split] = os.path.join(os.path.dirname(demo_data[split]), f"contract_{name}_{split}.csv")
        df.to_csv(frames[split], index=False)
    return frames


def test_tasks_table_holds_task_classes_named_after_their_keys():
    assert set(TASKS) == set(PREDICTION_KEYS)
    for name, cls in TASKS.items():
        task = get_task(name)
        assert issubclass(cls, Task) and type(task) is cls and task.name == name
        assert task.serving_output_names and task.encoding.name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_task_trains_evaluates_predicts_and_exports(name, demo_data, tiny_bert, tmp_path):
    task = get_task(name)
    data = _manifests(demo_data, name)
    config = make_tiny_config(tiny_bert).replace(
        model={"task": name, "freeze_image": True, "freeze_text": True},
        data={"negatives": 1 if name == "matching" else 0},
    )
    result = tfmm.train(config, data["train"], data["val"], str(tmp_path / "run"), verbose=0)
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"]).all()
    train_m = tfmm.read_manifest(data["train"], require_labels=False)
    assert result.labels == (list(task.fixed_labels) if task.fixed_labels is not None else task.label_vocab(train_m))

    metrics = tfmm.evaluate(result.run_dir, data["val"], report_dir=str(tmp_path / "report"))
    assert metrics["task"] == name and metrics["n_examples"] >= 8
    assert json.load(open(tmp_path / "report" / "metrics.json")) == json.loads(json.dumps(metrics))
    summary = task.summary(metrics)
    assert isinstance(summary, str) and any(ch.isdigit() for ch in summary)

    records = tfmm.predict(result.run_dir, data["val"], k=2)
    assert [r["row"] for r in records] == list(range(8))
    for record in records:
        assert set(record) - {"row", "true_label"} == PREDICTION_KEYS[name]

    export = export_for_serving(result.run_dir, str(tmp_path / "export"), warmup_records=0, check=False)
    fn = saved_model.load_saved_model(export.path).signatures["serving_default"]
    frame = pd.read_csv(data["val"]).head(2)
    folder = os.path.dirname(data["val"])
    out = fn(image_bytes=tf.constant([open(os.path.join(folder, p), "rb").read() for p in frame["image"]]),
             text=tf.constant(frame["text"].tolist()))
    assert set(out) == set(task.serving_output_names)
    assert all(value.shape[0] == 2 for value in out.values())
    meta = json.load(open(os.path.join(export.path, "assets.extra", "tfmm.json")))
    assert meta["task"] == name and ", ".join(task.serving_output_names) in meta["signatures"]["serving_default"]
