"""Ranking metrics from scores: ROC and precision-recall curves, ROC-AUC and PR-AUC.

Exact values from the sorted scores (no threshold buckets), matching
``sklearn.metrics.roc_curve`` / ``roc_auc_score`` / ``precision_recall_curve`` /
``average_precision_score``. Every function works on one label; :func:`per_label_auc`
applies them column by column, so binary tasks (one column: the positive class) and
multi-label tasks (one column per label) share the same code.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _check(y_true, scores) -> tuple:
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores must have the same length; received {y.size} and {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0/1 values; received {sorted(set(np.unique(y).tolist()))[:10]}")
    return y.astype(bool), s


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple:
    """True/false positives at each distinct threshold, scores sorted descending."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # ties share one threshold
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    return tps, fps, s[last_of_run]


def roc_curve(y_true, scores) -> tuple:
    """ROC curve of one label.

    Args:
        y_true: ``[N]`` 0/1 ground truth.
        scores: ``[N]`` scores, higher meaning more likely positive.

    Returns:
        ``(fpr, tpr, thresholds)``, starting at ``(0, 0)`` (threshold ``inf``).

    Raises:
        ValueError: both classes must be present (the rates are undefined otherwise).

    Example:
        >>> fpr, tpr, _ = roc_curve([0, 1, 1], [0.2, 0.9, 0.6])
    """
    y, s = _check(y_true, scores)
    if y.all() or not y.any():
        raise ValueError("roc_curve needs both positive and negative examples; received one class only")
    tps, fps, thresholds = _cumulative_counts(y, s)
    fpr = np.r_[0.0, fps] / fps[-1]
    tpr = np.r_[0.0, tps] / tps[-1]
    return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(y_true, scores) -> tuple:
    """Precision-recall curve of one label, by decreasing threshold.

    Returns:
        ``(precision, recall, thresholds)``, starting at recall 0 with precision 1
        (threshold ``inf``), as plotted.

    Raises:
        ValueError: there is no positive example.
    """
    y, s = _check(y_true, scores)
    if not y.any():
        raise ValueError("precision_recall_curve needs at least one positive example; received none")
    tps, fps, thresholds = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[1.0, precision], np.r_[0.0, recall], np.r_[np.inf, thresholds]


def roc_auc(y_true, scores) -> Optional[float]:
    """Area under the ROC curve (trapezoids), or ``None`` when only one class is present."""
    try:
        fpr, tpr, _ = roc_curve(y_true, scores)
    except ValueError as e:
        if "one class" not in str(e):
            raise
        return None
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(y_true, scores) -> Optional[float]:
    """PR-AUC as average precision: ``sum((R_k - R_{k-1}) * P_k)`` over thresholds.

    The step-wise sum (no interpolation) of ``sklearn.metrics.average_precision_score``;
    ``None`` when there is no positive example.
    """
    try:
        precision, recall, _ = precision_recall_curve(y_true, scores)
    except ValueError as e:
        if "positive" not in str(e):
            raise
        return None
    return float(np.sum(np.diff(recall) * precision[1:]))


def _mean(values) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def per_label_auc(y_true, scores, labels: Sequence[str]) -> dict:
    """ROC-AUC and PR-AUC for every label (column) of a 0/1 target matrix.

    Args:
        y_true: ``[N, L]`` 0/1 targets (one-hot, multi-hot, or ``[N, 1]`` for binary).
        scores: ``[N, L]`` scores.
        labels: the ``L`` label names.

    Returns:
        ``{"roc_auc": {label: auc}, "pr_auc": {label: ap}, "roc_auc_macro", "pr_auc_macro"}``;
        a label whose AUC is undefined (one class only) gets ``None`` and is left out of
        the macro mean.

    Example:
        >>> per_label_auc([[1, 0], [0, 1]], [[0.8, 0.3], [0.4, 0.6]], ["cat", "dog"])["roc_auc_macro"]
        1.0
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape or y.shape[1] != len(labels):
        raise ValueError(
            f"y_true and scores must both be [N, {len(labels)}] (one column per label); "
            f"received {y.shape} and {s.shape}"
        )
    roc = {name: roc_auc(y[:, j], s[:, j]) for j, name in enumerate(labels)}
    pr = {name: average_precision(y[:, j], s[:, j]) for j, name in enumerate(labels)}
    undefined = [name for name, v in roc.items() if v is None]
    if undefined:
        logger.warning("ROC-AUC undefined (one class only in the data) for: %s", undefined)
    return {"roc_auc": roc, "pr_auc": pr, "roc_auc_macro": _mean(roc.values()),
            "pr_auc_macro": _mean(pr.values())}
