"""Task metrics on numpy arrays (single-label, multi-label, matching, ROC/PR) against scikit-learn."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from tfmm.tasks import metrics as ranking
from tfmm.tasks.metrics import compute_metrics, matching_metrics, multilabel_metrics, roc_auc


def test_multilabel_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 5)) < 0.3).astype(int)
    y_pred = np.where(rng.random((200, 5)) < 0.8, y_true, 1 - y_true)
    y_pred[:, 4] = 0  # a label never predicted: precision 0 by convention
    labels = ["a", "b", "c", "d", "e"]
    got = multilabel_metrics(y_true, y_pred, labels)
    for average in ("micro", "macro", "weighted"):
        assert got[f"f1_{average}"] == pytest.approx(skm.f1_score(y_true, y_pred, average=average, zero_division=0))
        assert got[f"precision_{average}"] == pytest.approx(
            skm.precision_score(y_true, y_pred, average=average, zero_division=0))
        assert got[f"recall_{average}"] == pytest.approx(skm.recall_score(y_true, y_pred, average=average, zero_division=0))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(y_true, y_pred))
    report = skm.classification_report(y_true, y_pred, target_names=labels, output_dict=True, zero_division=0)
    for label in labels:
        for key in ("precision", "recall", "f1"):
            assert got["per_class"][label][key] == pytest.approx(report[label][key if key != "f1" else "f1-score"])
        assert got["per_class"][label]["support"] == report[label]["support"]
    np.testing.assert_array_equal(got["confusion_matrix"], skm.multilabel_confusion_matrix(y_true, y_pred))
    json.dumps(got)  # serializable as metrics.json


def test_matching_metrics_and_roc_auc_equal_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    scores = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 2)  # rounded: many ties
    got = matching_metrics(y, scores, threshold=0.45)
    pred = scores >= 0.45
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert got["n_positive"] == y.sum() and got["threshold"] == 0.45
    assert roc_auc([1, 1], [0.2, 0.9]) is None


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # c5: on purpose
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_metrics_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(6)]
    y_true = rng.integers(0, 5, 200)  # c5 never occurs: zero support
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, 200))
    m = compute_metrics(y_true, y_pred, labels)
    ids = list(range(6))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=avg, zero_division=0)
        assert (m[f"precision_{avg}"], m[f"recall_{avg}"], m[f"f1_{avg}"]) == pytest.approx((p, r, f))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    for i, name in enumerate(labels):
        assert m["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    assert m["n_examples"] == 200


def test_ranking_metrics_equal_sklearn_and_skip_undefined():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n)
        s = np.round(rng.random(n), 1)  # many ties
        if y.all() or not y.any():
            continue
        assert ranking.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert ranking.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        out = ranking.ranking_curves(y, s, "yes")
        fpr, tpr, auc = out["roc"]["yes"]
        assert auc == pytest.approx(skm.auc(fpr, tpr)) and fpr[0] == 0 and tpr[-1] == 1
        recall, precision, ap = out["pr"]["yes"]
        assert ap == pytest.approx(skm.average_precision_score(y, s)) and recall.min() == 0
    assert ranking.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]) is None  # one class: undefined
    assert ranking.average_precision([0, 0], [0.1, 0.2]) is None  # no positive
    only_positive = ranking.ranking_curves([1, 1], [0.1, 0.2], "yes")
    assert only_positive["roc"] == {} and set(only_positive["pr"]) == {"yes"}
    assert ranking.ranking_curves([0, 0], [0.1, 0.2], "yes") == {"roc": {}, "pr": {}}


def test_ranking_metrics_by_hand():
    """Four rows, by hand: the positives score 0.35 and 0.8, the negatives 0.1 and 0.4."""
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # 3 of the 4 (positive, negative) pairs are ordered right: 0.8 > 0.1, 0.8 > 0.4, 0.35 > 0.1.
    assert ranking.roc_auc(y, s) == pytest.approx(0.75)
    # Positives at ranks 1 and 3: precision 1 at recall 0.5, 2/3 at recall 1.
    assert ranking.average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    curves = ranking.ranking_curves(y, s, "yes")
    fpr, tpr, auc = curves["roc"]["yes"]
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert auc == pytest.approx(0.75)
    recall, precision, ap = curves["pr"]["yes"]
    # Thresholds 0.1, 0.35, 0.4, 0.8 in turn, then the (recall 0, precision 1) end point.
    np.testing.assert_allclose(recall, [1, 1, 0.5, 0.5, 0])
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1, 1])
    assert ap == pytest.approx(5 / 6)
