"""The contract every task in ``TASKS`` keeps: it trains on tiny data, evaluates, predicts and
exports, through the same calls, with the keys its own methods declare.

A new task gets this test by its entry in ``TASKS`` (and its manifests in
``tests/task_runs.py``, which trains and exports one run per task for the whole session).
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfmm
from tfmm.serving import saved_model
from tfmm.tasks import TASKS, Task, get_task

# The keys of each task's predicted rows, besides "row" and "true_label".
PREDICTION_KEYS = {
    "classification": {"labels", "scores"},
    "binary": {"labels", "scores"},
    "multilabel": {"labels", "scores", "predicted"},
    "matching": {"match_score", "match"},
    "contrastive": {"similarity", "image_embedding", "text_embedding"},
}


def test_tasks_table_holds_task_classes_named_after_their_keys():
    assert set(TASKS) == set(PREDICTION_KEYS)
    for name, cls in TASKS.items():
        task = get_task(name)
        assert issubclass(cls, Task) and type(task) is cls and task.name == name
        assert task.serving_output_names and task.encoding.name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_task_trains_evaluates_predicts_and_exports(name, task_data, task_run, task_export, tmp_path):
    task, data = get_task(name), task_data(name)
    result = task_run(name)  # `tfmm train` on 24 rows, frozen encoders (tests/task_runs.py)
    assert result.config.model.task == name
    epochs = result.config.train.epochs
    assert len(result.history["loss"]) == epochs and np.isfinite(result.history["loss"]).all()
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

    export = task_export(name)
    assert export.report.ok, str(export.report)
    fn = saved_model.load_saved_model(export.path).signatures["serving_default"]
    frame = pd.read_csv(data["val"]).head(2)
    folder = os.path.dirname(data["val"])
    out = fn(image_bytes=tf.constant([open(os.path.join(folder, p), "rb").read() for p in frame["image"]]),
             text=tf.constant(frame["text"].tolist()))
    assert set(out) == set(task.serving_output_names)
    assert all(value.shape[0] == 2 for value in out.values())
    meta = json.load(open(os.path.join(export.path, "assets.extra", "tfmm.json")))
    assert meta["task"] == name and ", ".join(task.serving_output_names) in meta["signatures"]["serving_default"]
