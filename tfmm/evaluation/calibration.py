"""Calibration math: temperature scaling, expected calibration error, Brier score and the
data of a reliability diagram.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides a
model's logits by one scalar ``T > 0`` fitted on held-out data to minimize the negative
log-likelihood. ``T > 1`` softens over-confident scores, ``T < 1`` sharpens under-confident
ones; the ranking of the classes, and so accuracy, ROC-AUC and average precision, stay the
same. tfmm models end in a softmax or a sigmoid, so the logits are recovered from the
probabilities: ``log p`` for a softmax (the logits up to a per-row constant, which the
softmax ignores) and ``log p - log(1 - p)`` for a sigmoid.

Two score layouts are accepted everywhere:

- softmax: probabilities ``[N, K]`` (``K >= 2``) with integer targets ``[N]`` (or one-hot
  ``[N, K]``);
- sigmoid: probabilities ``[N]`` or ``[N, 1]`` of the positive class with 0/1 targets.

This module depends on numpy, scipy, scikit-learn and TensorFlow only (no other tfmm
module), so the tasks that fit and apply the temperature may use it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

SOFTMAX = "softmax"
SIGMOID = "sigmoid"
ACTIVATIONS = (SOFTMAX, SIGMOID)
DEFAULT_BINS = 15
# The temperature is searched on log T within these bounds (T = 1 is always a candidate).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# Probabilities are clipped to [EPSILON, 1 - EPSILON] before their logits are taken
# (float32 sigmoid outputs reach 1.0 for logits above ~17).
EPSILON = 1e-7


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}; received {activation!r}")


def _layout(probabilities, targets) -> tuple:
    """``(probabilities, int targets, activation)`` in the canonical layout.

    Raises:
        ValueError: shapes that fit neither layout, or targets out of range.
    """
    p = np.asarray(probabilities, dtype="float64")
    y = np.asarray(targets)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        y = y.reshape(-1)
        if y.shape != p.shape or not np.isin(y, (0, 1)).all():
            raise ValueError(f"sigmoid scores [N] need 0/1 targets [N]; received scores {p.shape} and "
                             f"targets {y.shape} with values {np.unique(y)[:5].tolist()}")
        return p, y.astype(int), SIGMOID
    if p.ndim != 2:
        raise ValueError(f"probabilities must be [N, K] (softmax) or [N] (sigmoid); received shape {p.shape}")
    if y.ndim == 2 and y.shape == p.shape:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if len(y) != len(p) or (len(y) and (y.min() < 0 or y.max() >= p.shape[1])):
        raise ValueError(f"softmax scores {p.shape} need integer targets [N] in [0, {p.shape[1]}); "
                         f"received targets of shape {np.shape(targets)}")
    return p, y.astype(int), SOFTMAX


def logits_from_probabilities(probabilities, activation: str) -> np.ndarray:
    """The logits behind softmax or sigmoid outputs (clipped away from 0 and 1).

    Example:
        >>> logits_from_probabilities(np.array([0.5, 0.731059]), "sigmoid").round(3)
        array([0., 1.])
    """
    _check_activation(activation)
    p = np.clip(np.asarray(probabilities, dtype="float64"), EPSILON, 1.0 - EPSILON)
    return np.log(p) if activation == SOFTMAX else np.log(p) - np.log1p(-p)


def probabilities_from_logits(logits, activation: str, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` over the last axis, or ``sigmoid(logits / T)``."""
    _check_activation(activation)
    z = np.asarray(logits, dtype="float64") / float(temperature)
    if activation == SIGMOID:
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def scale_probabilities(probabilities, temperature: float, activation: str) -> np.ndarray:
    """The probabilities a temperature-scaled model gives: ``act(logits(p) / T)``; ``T = 1``
    returns ``probabilities`` unchanged.

    Example:
        >>> scale_probabilities(np.array([[0.9, 0.1]]), 2.0, "softmax").round(3)
        array([[0.75, 0.25]])
    """
    if float(temperature) == 1.0:
        return np.asarray(probabilities)
    scaled = probabilities_from_logits(logits_from_probabilities(probabilities, activation), activation, temperature)
    return scaled.astype(np.asarray(probabilities).dtype if np.asarray(probabilities).dtype.kind == "f" else "float64")


def scale_probabilities_tf(probabilities: tf.Tensor, temperature: float, activation: str) -> tf.Tensor:
    """:func:`scale_probabilities` in TensorFlow core ops (the serving graph), float32."""
    _check_activation(activation)
    p = tf.cast(probabilities, tf.float32)
    if float(temperature) == 1.0:
        return p
    t = tf.constant(float(temperature), tf.float32)
    p = tf.clip_by_value(p, EPSILON, 1.0 - EPSILON)
    if activation == SOFTMAX:
        return tf.nn.softmax(tf.math.log(p) / t, axis=-1)
    return tf.math.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / t)


def negative_log_likelihood(probabilities, targets) -> float:
    """Mean negative log-likelihood of the targets (the cross-entropy the model was trained
    on; probabilities are clipped to ``[1e-7, 1 - 1e-7]``)."""
    p, y, activation = _layout(probabilities, targets)
    if not len(y):
        return 0.0
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    likelihood = np.where(y == 1, p, 1.0 - p) if activation == SIGMOID else p[np.arange(len(y)), y]
    return float(-np.mean(np.log(likelihood)))


def fit_temperature(logits, targets, *, bounds: tuple = (MIN_TEMPERATURE, MAX_TEMPERATURE)) -> float:
    """The temperature ``T`` minimizing the NLL of ``act(logits / T)`` on ``targets``.

    A bounded 1-D search on ``log T`` (``scipy.optimize.minimize_scalar``, method
    ``bounded``); ``T = 1`` is kept when the search does not beat it.

    Args:
        logits: ``[N, K]`` softmax logits with integer targets ``[N]`` (or one-hot), or
            ``[N]`` / ``[N, 1]`` sigmoid logits with 0/1 targets.
        targets: see ``logits``.
        bounds: the range of ``T``.

    Returns:
        ``T > 0`` (a float).

    Raises:
        ValueError: no rows, non-finite logits, or shapes that do not fit.

    Example:
        >>> z = np.array([[8.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 0.0]])
        >>> fit_temperature(z, np.array([0, 1, 1, 0])) > 1.0
        True
    """
    z, y, activation = _layout(logits, targets)
    if not len(z) or not np.isfinite(z).all():
        raise ValueError(f"fit_temperature needs finite logits of at least one row; received shape {z.shape}")

    def nll(log_t: float) -> float:
        return negative_log_likelihood(probabilities_from_logits(z, activation, np.exp(log_t)), y)

    result = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x)) if result.fun < nll(0.0) else 1.0


def _top_label(probabilities, targets) -> tuple:
    """``(confidence [N], correct [N] 0/1)`` of each row's predicted label."""
    p, y, activation = _layout(probabilities, targets)
    if activation == SIGMOID:
        predicted = (p >= 0.5).astype(int)
        return np.where(predicted == 1, p, 1.0 - p), (predicted == y).astype(int)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(int)


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin index of each confidence: bin ``b`` holds ``(b / n, (b + 1) / n]``
    (the first also holds 0), as ``sklearn.calibration.calibration_curve`` bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; received {n_bins}")
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)


def expected_calibration_error(probabilities, targets, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label expected calibration error over equal-width confidence bins.

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``, where a row's
    confidence is its predicted label's probability (a sigmoid row: ``max(p, 1 - p)``).

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2)
        0.25
    """
    confidence, correct = _top_label(probabilities, targets)
    if not len(confidence):
        return 0.0
    ids = _bins(confidence, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    gap = np.abs(np.bincount(ids, weights=correct, minlength=n_bins)
                 - np.bincount(ids, weights=confidence, minlength=n_bins))
    return float(gap.sum() / count.sum())


def brier_score(probabilities, targets) -> float:
    """Brier score (``sklearn.metrics.brier_score_loss``): the mean squared error of the
    probabilities against the one-hot targets, summed over the classes for a softmax
    (``mean_i sum_k (p_ik - y_ik)^2``, 0 to 2) and of the positive class for a sigmoid
    (``mean_i (p_i - y_i)^2``, 0 to 1). Softmax rows are renormalized to sum to 1 (float32
    outputs miss it by rounding)."""
    p, y, activation = _layout(probabilities, targets)
    if activation == SIGMOID:
        return float(brier_score_loss(y, np.clip(p, 0.0, 1.0), pos_label=1))
    p = p / np.maximum(p.sum(axis=1, keepdims=True), EPSILON)
    return float(brier_score_loss(y, p, labels=np.arange(p.shape[1]), scale_by_half=False))


def reliability_curve(probabilities, targets, n_bins: int = DEFAULT_BINS) -> tuple:
    """The points of a (top-label) reliability diagram: ``(mean confidence, accuracy)`` of
    each non-empty bin (``sklearn.calibration.calibration_curve``, uniform bins)."""
    confidence, correct = _top_label(probabilities, targets)
    if not len(confidence):
        return np.zeros(0), np.zeros(0)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform",
                                                  pos_label=1)
    return mean_confidence, accuracy


def calibration_metrics(probabilities, targets, n_bins: int = DEFAULT_BINS) -> dict:
    """``{"nll", "ece", "brier"}`` of probabilities against targets."""
    return {"nll": negative_log_likelihood(probabilities, targets),
            "ece": expected_calibration_error(probabilities, targets, n_bins),
            "brier": brier_score(probabilities, targets)}


def compare_calibration(uncalibrated, calibrated, targets, *, temperature: float,
                        n_bins: int = DEFAULT_BINS) -> tuple:
    """What ``metrics.json`` reports of a run's calibration, and the reliability curves.

    Returns:
        ``(metrics, curves)``: ``metrics`` holds ``ece``, ``brier``, ``nll`` (of the
        calibrated scores: what the run serves), the same with ``_uncalibrated``, and
        ``temperature``; ``curves`` is ``{"uncalibrated": (confidence, accuracy, ece),
        "calibrated": (...)}`` (the calibrated entry only when ``T != 1``).
    """
    after = calibration_metrics(calibrated, targets, n_bins)
    before = after if float(temperature) == 1.0 else calibration_metrics(uncalibrated, targets, n_bins)
    metrics = {**after, **{f"{k}_uncalibrated": v for k, v in before.items()}, "temperature": float(temperature)}
    curves = {"uncalibrated": (*reliability_curve(uncalibrated, targets, n_bins), before["ece"])}
    if float(temperature) != 1.0:
        curves["calibrated"] = (*reliability_curve(calibrated, targets, n_bins), after["ece"])
    return metrics, curves


def fit_report(probabilities, targets, activation: str, *, n_bins: int = DEFAULT_BINS) -> Optional[dict]:
    """Fits the temperature of a model's probabilities on held-out targets.

    Returns:
        ``{"temperature", "activation", "n_rows", "before": {nll, ece, brier}, "after":
        {...}}``, or ``None`` when there are no rows or the scores are not finite.
    """
    p, y, layout = _layout(probabilities, targets)
    if layout != activation:
        raise ValueError(f"activation {activation!r} does not fit scores of shape {np.shape(probabilities)}")
    if not len(p) or not np.isfinite(p).all():
        return None
    temperature = fit_temperature(logits_from_probabilities(p, activation), y)
    scaled = scale_probabilities(p, temperature, activation)
    return {"temperature": temperature, "activation": activation, "n_rows": int(len(p)),
            "before": calibration_metrics(p, y, n_bins), "after": calibration_metrics(scaled, y, n_bins)}
