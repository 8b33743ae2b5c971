"""Task metrics on numpy arrays: single-label (from the confusion matrix), multi-label,
matching, ROC/PR (scikit-learn), per-class summaries, and the top-k of a score matrix.
The tasks (``tfmm.tasks.*``) run them on a trained run's scores."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import sklearn.metrics as skm

from tfmm.tasks.thresholds import DEFAULT_THRESHOLD


def _ratio(num, den):
    num, den = np.asarray(num, dtype="float64"), np.asarray(den, dtype="float64")
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def roc_auc(y_true, scores) -> Optional[float]:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``).

    Returns:
        The AUC, or ``None`` when ``y_true`` holds a single class (undefined).
    """
    y = np.asarray(y_true).ravel() > 0.5
    if y.all() or not y.any():
        return None
    return float(skm.roc_auc_score(y, np.asarray(scores, dtype="float64").ravel()))


def average_precision(y_true, scores) -> Optional[float]:
    """PR-AUC as average precision (``sklearn.metrics.average_precision_score``); ``None``
    when there is no positive example."""
    y = np.asarray(y_true).ravel() > 0.5
    if not y.any():
        return None
    return float(skm.average_precision_score(y, np.asarray(scores, dtype="float64").ravel()))


def ranking_curves(y_true, scores, label: str) -> dict:
    """The report's ROC and precision-recall curves of one label.

    Returns:
        ``{"roc": {label: (fpr, tpr, auc)}, "pr": {label: (recall, precision, ap)}}``; a
        curve that is undefined (one class only / no positive) is left out.
    """
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(scores, dtype="float64").ravel()
    out = {"roc": {}, "pr": {}}
    if y.any() and not y.all():
        fpr, tpr, _ = skm.roc_curve(y, s)
        out["roc"][label] = (fpr, tpr, roc_auc(y, s))
    if y.any():
        precision, recall, _ = skm.precision_recall_curve(y, s)
        out["pr"][label] = (recall, precision, average_precision(y, s))
    return out


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Single-label metrics from integer class ids.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``precision_macro``, ``recall_macro``,
        ``f1_macro``, their ``_weighted`` versions, ``per_class`` (precision, recall, f1,
        support per label), ``confusion_matrix`` (rows: true, columns: predicted) and
        ``n_examples``. Undefined ratios (no predictions / no support) count as 0.
    """
    n = len(labels)
    cm = skm.confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=np.arange(n))
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    present = support > 0
    return {
        "n_examples": int(cm.sum()),
        "accuracy": float(tp.sum() / max(int(cm.sum()), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        **class_summary(precision, recall, f1, support, labels),
        "confusion_matrix": cm.tolist(),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Multi-label metrics from ``[N, C]`` 0/1 targets and 0/1 predictions.

    Returns:
        ``accuracy`` (exact match of the whole label set), ``hamming_loss``,
        ``precision/recall/f1`` ``_micro`` (counts pooled over labels), ``_macro`` (mean
        over labels) and ``_weighted`` (by support), ``per_class`` (precision, recall, f1,
        support per label), ``confusion_matrix`` (per label ``[[tn, fp], [fn, tp]]``),
        ``labels`` and ``n_examples``. Undefined ratios count as 0, as in scikit-learn.
    """
    t = np.asarray(y_true) > 0.5
    p = np.asarray(y_pred) > 0.5
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(labels):
        raise ValueError(f"y_true and y_pred must be [N, {len(labels)}]; received {t.shape} and {p.shape}")
    tp = (t & p).sum(0)
    fp = (~t & p).sum(0)
    fn = (t & ~p).sum(0)
    tn = (~t & ~p).sum(0)
    support = t.sum(0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    out = {
        "task": "multilabel",
        "n_examples": int(len(t)),
        "accuracy": float((t == p).all(axis=1).mean()) if len(t) else 0.0,
        "hamming_loss": float((t != p).mean()) if t.size else 0.0,
        "precision_micro": float(_ratio(tp.sum(), tp.sum() + fp.sum())),
        "recall_micro": float(_ratio(tp.sum(), tp.sum() + fn.sum())),
        "f1_micro": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        **class_summary(precision, recall, f1, support, labels),
        "confusion_matrix": [[[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]] for i in range(len(labels))],
    }
    return out


def matching_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Matching metrics from 0/1 targets and match scores.

    Returns:
        ``accuracy``, ``f1``, ``precision``, ``recall`` (of the positive class "matches",
        predicted when ``score >= threshold``), ``roc_auc`` (``None`` if one class only),
        ``threshold``, ``n_positive`` and ``n_examples``.
    """
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(scores, dtype="float64").ravel()
    p = s >= threshold
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    return {
        "task": "matching",
        "n_examples": int(len(y)),
        "n_positive": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": float((y == p).mean()) if len(y) else 0.0,
        "precision": float(_ratio(tp, tp + fp)),
        "recall": float(_ratio(tp, tp + fn)),
        "f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
        "roc_auc": roc_auc(y, s),
    }


def class_summary(precision, recall, f1, support, labels: Sequence[str]) -> dict:
    """Macro and support-weighted precision/recall/F1, ``per_class`` and ``labels``, from
    per-class arrays (shared by single-label and multi-label metrics)."""
    precision, recall, f1 = (np.asarray(x, dtype=float) for x in (precision, recall, f1))
    support = np.asarray(support, dtype=float)
    weights = support / support.sum() if support.sum() > 0 else np.zeros_like(support)
    return {
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]),
                    "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
    }


def top_k(scores: np.ndarray, labels: Sequence[str], k: int) -> list:
    """``[(labels, scores)]`` per row, the ``k`` best sorted by descending score."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [([labels[j] for j in row], [float(scores[i, j]) for j in row]) for i, row in enumerate(order)]
