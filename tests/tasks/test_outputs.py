"""What tasks make of scores: evaluation metrics and curves, serving outputs with the run's
thresholds, and TensorBoard decisions."""

import types

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest
from tfmm.tasks import get_task
from tfmm.tasks.thresholds import save_thresholds


def _fake_run(tmp_path, task, labels, scores):
    """A stand-in run whose model returns fixed scores (what a task's serving outputs wrap)."""
    import types

    import tensorflow as tf

    return types.SimpleNamespace(run_dir=str(tmp_path), labels=labels, config=RunConfig().replace(model={"task": task}),
                                 model=lambda features, training=False: tf.constant(scores))


def test_serving_outputs_apply_the_thresholds(tmp_path):
    save_thresholds(str(tmp_path), ["1"], [0.5], tuned_on=None)
    out = get_task("matching").serving_outputs(_fake_run(tmp_path, "matching", ["0", "1"],
                                                         np.array([[0.2], [0.6]], "float32")))({})
    assert out["match_score"].shape == (2,) and out["match"].numpy().tolist() == [False, True]
    scores = np.array([[0.9, 0.1, 0.4], [0.2, 0.8, 0.5]], "float32")
    save_thresholds(str(tmp_path), ["a", "b", "c"], [0.5, 0.5, 0.45], tuned_on="validation data")
    out = get_task("multilabel").serving_outputs(_fake_run(tmp_path, "multilabel", ["a", "b", "c"], scores))({})
    assert out["labels"].numpy().astype(str).tolist() == [["a", "b", "c"]] * 2
    assert out["predicted"].numpy().tolist() == [[True, False, False], [False, True, True]]
    np.testing.assert_allclose(out["scores"], scores)
    binary = get_task("binary").serving_outputs(_fake_run(tmp_path, "binary", ["no", "yes"],
                                                          np.array([[0.25]], "float32")))({})
    np.testing.assert_allclose(binary["scores"], [[0.75, 0.25]])
    assert binary["labels"].numpy().astype(str).tolist() == [["no", "yes"]]


def test_decisions_follow_the_thresholds_the_evaluation_uses():
    """The TensorBoard examples decide as evaluation does: tuned thresholds (multilabel),
    the larger class score (binary), the tuned threshold (matching)."""
    scores = np.array([[0.45, 0.1], [0.2, 0.7]])
    multilabel = get_task("multilabel")
    assert multilabel.decisions(scores, ["a", "b"])[0] == ["(none)", "b"]
    assert multilabel.decisions(scores, ["a", "b"], thresholds=[0.4, 0.8])[0] == ["a", "(none)"]
    y = np.array([[1, 0], [0, 1]])
    tuned = multilabel.tune_thresholds(y, scores)
    assert multilabel.decisions(scores, ["a", "b"], tuned)[0] == ["a", "b"]
    names, top = get_task("binary").decisions(np.array([[0.3], [0.8]]), ["no", "yes"])
    assert names == ["no", "yes"] and top == pytest.approx([0.7, 0.8])
    assert get_task("matching").decisions(np.array([[0.3], [0.8]]), ["0", "1"], [0.25])[0] == ["1", "1"]
    assert get_task("classification").decisions(np.array([[0.1, 0.9]]), ["a", "b"]) == (["b"], [0.9])


def _labeled_manifest(labels):
    frame = pd.DataFrame({"row": np.arange(len(labels)), "image": [f"/x/{i}.png" for i in range(len(labels))],
                          "text": ["t"] * len(labels), "label": labels})
    return Manifest(frame, "test.csv", "/x")


def test_binary_evaluation_adds_auc_and_curves():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 100)
    p = np.clip(y * 0.3 + rng.random(100) * 0.7, 0, 1)
    run = types.SimpleNamespace(labels=["no", "yes"])
    evaluation = get_task("binary").evaluate_scores(run, _labeled_manifest(np.array(["no", "yes"])[y]), p[:, None])
    m = evaluation.metrics
    assert m["task"] == "binary" and m["positive_label"] == "yes"
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, (p > 0.5).astype(int), average="macro"))
    assert set(evaluation.curves["roc"]) == {"yes"} and set(evaluation.curves["pr"]) == {"yes"}
