"""Task heads, losses, thresholds and metrics beyond single-label classification.

- ``matching``: does the caption describe the image? A ``concat -> Dense`` head scores
  ``f(image) + g(text)``, a sum with no term that depends on both, so it cannot tell a
  matching pair from a mismatched one when each image and each caption is as often in
  either. The matching head therefore feeds an MLP with *interaction features* of the two
  projected embeddings ``u`` and ``v``: ``[u, v, u * v, |u - v|]``
  (:class:`PairInteraction`), and outputs one sigmoid ``match_score``.
- ``multilabel``: sigmoid scores per label (see :mod:`tfmm.heads`); the decision threshold
  of each label is tuned on validation data (:func:`tune_thresholds`) and stored in the run
  directory as ``thresholds.json``. ``matching`` stores its one threshold the same way.
- ``contrastive``: see :mod:`tfmm.contrastive`.

Metric functions here take numpy arrays and return plain dicts; :mod:`tfmm.task_eval`
runs them on a trained run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import keras
import numpy as np

from tfmm import contrastive

logger = logging.getLogger(__name__)

TASK_HEADS = ("matching", "contrastive")
THRESHOLD_TASKS = ("multilabel", "matching")
THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5


@keras.saving.register_keras_serializable(package="tfmm")
class PairInteraction(keras.layers.Layer):
    """``[u, v] -> [u, v, u * v, |u - v|]``: features that depend on both members of a pair.

    ``u * v`` carries their agreement feature by feature (its sum is the dot product) and
    ``|u - v|`` their distance, so a linear layer on top can already score similarity,
    which no function of the form ``f(u) + g(v)`` can.

    Args:
        include_inputs: also pass ``u`` and ``v`` through (``D' = 4 D``; else ``2 D``).

    Raises:
        ValueError: ``u`` and ``v`` have different widths.

    Example:
        >>> layer = PairInteraction()
        >>> y = layer([keras.ops.ones((2, 8)), keras.ops.zeros((2, 8))])  # [2, 32]
    """

    def __init__(self, include_inputs: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.include_inputs = bool(include_inputs)

    def build(self, input_shape):
        u_shape, v_shape = input_shape
        if u_shape[-1] != v_shape[-1]:
            raise ValueError(
                f"PairInteraction needs inputs of equal width; received widths {[u_shape[-1], v_shape[-1]]}"
            )

    def call(self, inputs):
        u, v = inputs
        parts = [u, v] if self.include_inputs else []
        return keras.ops.concatenate(parts + [u * v, keras.ops.abs(u - v)], axis=-1)

    def compute_output_shape(self, input_shape):
        u_shape = input_shape[0]
        return (u_shape[0], u_shape[-1] * (4 if self.include_inputs else 2))

    def get_config(self):
        return {**super().get_config(), "include_inputs": self.include_inputs}


def build_matching_head(config, feature_dims: dict) -> keras.Model:
    """The ``fusion_head`` of a matching model: features -> ``[B, 1]`` match probability.

    Each modality's features are standardized
    (:func:`tfmm.contrastive.standardize_features`) and projected linearly to
    ``projection_dim`` (``image_projection``, ``text_projection``), then
    :class:`PairInteraction` -> dropout -> ``hidden_dim`` ReLU layer (when > 0) -> dropout
    -> ``match_score`` (sigmoid, float32).

    Raises:
        ValueError: the model does not use both modalities.
    """
    if set(feature_dims) != {"image_features", "text_features"}:
        raise ValueError(
            "task 'matching' needs both modalities (modalities='both'); received features "
            f"{sorted(feature_dims)}"
        )
    mc = config.model
    inputs = {name: keras.Input(shape=(d,), dtype="float32", name=name) for name, d in feature_dims.items()}
    u, v = (
        keras.layers.Dense(mc.projection_dim, name=f"{modality}_projection")(
            contrastive.standardize_features(inputs[f"{modality}_features"], modality))
        for modality in ("image", "text")
    )
    x = PairInteraction(name="interaction")([u, v])
    x = keras.layers.Dropout(mc.dropout, name="fusion_dropout")(x)
    if mc.hidden_dim:
        x = keras.layers.Dense(mc.hidden_dim, activation="relu", name="head_hidden")(x)
        x = keras.layers.Dropout(mc.dropout, name="head_dropout")(x)
    score = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="match_score")(x)
    return keras.Model(inputs, score, name="fusion_head")


def build_task_head(config, feature_dims: dict) -> keras.Model:
    """The ``fusion_head`` for ``matching`` or ``contrastive`` (see ``TASK_HEADS``)."""
    task = config.model.task
    if task == "matching":
        return build_matching_head(config, feature_dims)
    if task == "contrastive":
        return contrastive.build_dual_encoder_head(config, feature_dims)
    raise ValueError(f"task must be one of {list(TASK_HEADS)} for a task head; received {task!r}")


def output_units(task: str, num_classes: int) -> int:
    """Output width: 1 for ``matching`` (labels ``0``/``1``); 0 for ``contrastive`` (no classes)."""
    if task == "matching":
        if num_classes != 2:
            raise ValueError(f"task 'matching' needs the 2 labels 0 and 1; received {num_classes} label(s)")
        return 1
    if task == "contrastive":
        return 0
    raise ValueError(f"task must be one of {list(TASK_HEADS)}; received {task!r}")


def loss_for(task: str):
    """Binary cross-entropy for ``matching``; the in-batch contrastive loss for ``contrastive``."""
    if task == "matching":
        return keras.losses.BinaryCrossentropy()
    if task == "contrastive":
        return contrastive.loss_and_metrics()[0]
    raise ValueError(f"task must be one of {list(TASK_HEADS)}; received {task!r}")


def metrics_for(task: str) -> list:
    """``fit`` metrics: accuracy, ROC-AUC, precision, recall, F1 (``matching``); in-batch
    recall@1 (``contrastive``)."""
    if task == "matching":
        return [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.F1Score(average="micro", threshold=DEFAULT_THRESHOLD, name="f1"),
        ]
    if task == "contrastive":
        return contrastive.loss_and_metrics()[1]
    raise ValueError(f"task must be one of {list(TASK_HEADS)}; received {task!r}")


# ---------------------------------------------------------------------------- thresholds

def _best_f1_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The threshold ``t`` (predict ``s >= t``) with the highest F1; ties: closest to 0.5."""
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return DEFAULT_THRESHOLD
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last index of each distinct score
    predicted = np.arange(1, len(s) + 1)[last]
    f1 = 2 * tp[last] / (positives + predicted)
    cut = s_sorted[last]
    below = np.r_[cut[1:], cut[-1] - 1.0]  # next lower distinct score
    thresholds = np.where(np.arange(len(cut)) < len(cut) - 1, (cut + below) / 2, cut)
    best = np.flatnonzero(np.isclose(f1, f1.max()))
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - DEFAULT_THRESHOLD))]])


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-column decision thresholds maximizing F1 on (validation) data.

    Each threshold lies halfway between two neighbouring distinct scores; a column whose
    labels are all 0 or all 1 keeps 0.5.

    Args:
        y_true: ``[N, C]`` 0/1 targets.
        scores: ``[N, C]`` sigmoid scores.

    Returns:
        ``[C]`` float thresholds (predict a label when ``score >= threshold``).

    Example:
        >>> tune_thresholds(np.array([[0], [1], [1]]), np.array([[0.2], [0.3], [0.9]]))
        array([0.25])
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype="float64")
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"y_true and scores must both be [N, C]; received {y_true.shape} and {scores.shape}")
    return np.array([_best_f1_threshold(y_true[:, c] > 0.5, scores[:, c]) for c in range(y_true.shape[1])])


def save_thresholds(run_dir: str, labels: Sequence[str], thresholds, *, tuned_on: Optional[str]) -> str:
    """Writes ``RUN/thresholds.json``: ``{"labels", "thresholds", "tuned_on", "rule"}``."""
    path = os.path.join(run_dir, THRESHOLDS_FILE)
    payload = {
        "labels": list(labels),
        "thresholds": [float(t) for t in thresholds],
        "tuned_on": tuned_on,
        "rule": "predict a label when its score >= its threshold; tuned to maximize F1 per label"
        if tuned_on else "default 0.5 (no validation data to tune on)",
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    return path


def load_thresholds(run_dir: str, labels: Sequence[str]) -> np.ndarray:
    """The run's thresholds in ``labels`` order (0.5 each when ``thresholds.json`` is absent).

    Raises:
        ValueError: the file lists other labels than ``labels``.
    """
    path = os.path.join(run_dir, THRESHOLDS_FILE)
    if not os.path.exists(path):
        logger.info("%s not found: using threshold %.2f", path, DEFAULT_THRESHOLD)
        return np.full(len(labels), DEFAULT_THRESHOLD)
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if list(saved["labels"]) != list(labels):
        raise ValueError(f"{path}: thresholds are for labels {saved['labels']}; the run has {list(labels)}")
    return np.asarray(saved["thresholds"], dtype="float64")


def threshold_labels(task: str, labels: Sequence[str]) -> list:
    """What the thresholds are for: every label (multilabel) or the positive label ``1``."""
    return list(labels) if task == "multilabel" else [labels[1]]


def tune_and_save(model: keras.Model, val_ds, y_val: Optional[np.ndarray], run_dir: str, task: str,
                  labels: Sequence[str]) -> Optional[np.ndarray]:
    """After training: tunes the thresholds on ``val_ds`` (or keeps 0.5) and saves them.

    Args:
        model: the trained model.
        val_ds: the validation dataset (``None``: keep 0.5).
        y_val: its ``[N, C]`` targets (``[N, 1]`` for matching).
        run_dir: where ``thresholds.json`` goes.
        task: the run's task; other tasks than ``THRESHOLD_TASKS`` are skipped.
        labels: the run's labels.

    Returns:
        The thresholds, or ``None`` when the task has none.
    """
    if task not in THRESHOLD_TASKS:
        return None
    names = threshold_labels(task, labels)
    if val_ds is None or y_val is None:
        thresholds = np.full(len(names), DEFAULT_THRESHOLD)
    else:
        thresholds = tune_thresholds(y_val, np.asarray(model.predict(val_ds, verbose=0)))
    save_thresholds(run_dir, names, thresholds, tuned_on="validation data" if val_ds is not None else None)
    logger.info("decision thresholds %s", dict(zip(names, np.round(thresholds, 4).tolist())))
    return thresholds


# ---------------------------------------------------------------------------- metrics

def _ratio(num, den):
    num, den = np.asarray(num, dtype="float64"), np.asarray(den, dtype="float64")
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half).

    Returns:
        The AUC, or ``None`` when ``y_true`` holds a single class (undefined).
    """
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(scores, dtype="float64").ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average ranks of tied scores.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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


# ---------------------------------------------------------------------------- serving

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


def serving_outputs(task: str, scores, labels: Sequence[str], thresholds) -> dict:
    """The named outputs of a ``serving_default`` signature for ``multilabel`` / ``matching``.

    For the SavedModel export: wrap the model's output tensor with this inside the
    signature function, after loading ``thresholds`` with :func:`load_thresholds` (the
    thresholds become graph constants, so the server applies the run's tuned values).

    Args:
        task: ``multilabel`` or ``matching``.
        scores: the model's output, ``[B, C]`` (multilabel) or ``[B, 1]`` (matching).
        labels: the run's labels.
        thresholds: ``[C]`` (multilabel) or ``[1]`` (matching) decision thresholds.

    Returns:
        multilabel: ``scores`` float32 ``[B, C]``, ``labels`` string ``[B, C]`` (label names in
        score order) and ``predicted`` bool ``[B, C]`` (``score >= threshold``);
        matching: ``match_score`` float32 ``[B]`` and ``match`` bool ``[B]``.

    Raises:
        ValueError: another task.

    Example:
        >>> out = serving_outputs("matching", model(features), ["0", "1"], [0.42])
        >>> sorted(out)
        ['match', 'match_score']
    """
    import tensorflow as tf

    scores = tf.cast(scores, tf.float32)
    thresholds = tf.constant(np.asarray(thresholds, dtype="float32"))
    if task == "matching":
        match_score = scores[:, 0]
        return {"match_score": match_score, "match": match_score >= thresholds[0]}
    if task == "multilabel":
        names = tf.tile(tf.constant([list(labels)]), [tf.shape(scores)[0], 1])
        return {"scores": scores, "labels": names, "predicted": scores >= thresholds[None, :]}
    raise ValueError(f"task must be one of {list(THRESHOLD_TASKS)} for serving_outputs; received {task!r}")
