"""Scores of a run on a manifest, and the metrics of ``metrics.json`` computed from them.

Metrics are computed from the confusion matrix, so every number in ``metrics.json`` can be
traced back to it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfmm.data.manifest import Manifest
from tfmm.evaluation import curves
from tfmm.run_dir import LoadedRun
from tfmm.tasks.metrics import class_summary


def predict_scores(run: LoadedRun, manifest: Manifest) -> np.ndarray:
    """Model scores ``[N, C]`` (``[N, 1]`` for binary) for every row of ``manifest``."""
    ds = run.dataset(manifest, with_labels=False)
    return np.asarray(run.model.predict(ds, verbose=0))


def class_scores(scores: np.ndarray, task: str) -> np.ndarray:
    """Per-class scores: binary ``[N, 1]`` sigmoid becomes ``[N, 2]``."""
    if task == "binary":
        return np.concatenate([1.0 - scores, scores], axis=1)
    return scores


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Single-label metrics from integer class ids.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``precision_macro``, ``recall_macro``,
        ``f1_macro``, their ``_weighted`` versions, ``per_class`` (precision, recall, f1,
        support per label), ``confusion_matrix`` (rows: true, columns: predicted) and
        ``n_examples``. Undefined ratios (no predictions / no support) count as 0.
    """
    n = len(labels)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    total = max(int(cm.sum()), 1)
    present = support > 0
    return {
        "n_examples": int(cm.sum()),
        "accuracy": float(tp.sum() / total),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        **class_summary(precision, recall, f1, support, labels),
        "confusion_matrix": cm.tolist(),
    }


def score_metrics(y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str], task: str) -> dict:
    """:func:`compute_metrics` from per-class scores, plus ROC-AUC and PR-AUC for binary.

    Args:
        y_true: ``[N]`` integer class ids.
        scores: ``[N, C]`` per-class scores (see :func:`class_scores`).
        labels: the ``C`` labels (binary: ``labels[1]`` is the positive class).
        task: the run's task.

    Returns:
        The metrics dict; binary adds ``roc_auc``, ``pr_auc`` (average precision) and
        ``positive_label``.
    """
    metrics = compute_metrics(y_true, scores.argmax(axis=1), labels)
    if task == "binary":
        metrics["positive_label"] = labels[1]
        metrics["roc_auc"] = curves.roc_auc(y_true == 1, scores[:, 1])
        metrics["pr_auc"] = curves.average_precision(y_true == 1, scores[:, 1])
    return metrics
