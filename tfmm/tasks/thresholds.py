"""Decision thresholds of the tasks that tune them (multilabel: one per label; matching: one).

After ``fit`` each threshold is tuned to maximize F1 on the validation scores, calibrated
where the task calibrates (:func:`tune_thresholds`), and stored in the run directory as
``thresholds.json``; evaluation, prediction and the export read it back
(:func:`load_thresholds`), so all three decide alike.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import numpy as np

from tfmm.files import write_json_atomic
from tfmm.run_dir import THRESHOLDS_FILE

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # before tuning, and for labels that cannot be tuned


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
    write_json_atomic(path, payload)
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


def tune_and_save(scores: Optional[np.ndarray], y_val: Optional[np.ndarray], run_dir: str,
                  names: Sequence[str]) -> np.ndarray:
    """After training: tunes one threshold per name on the validation scores (or keeps 0.5)
    and saves them.

    Args:
        scores: the validation scores, ``[N, C]`` (calibrated, when the run is: the scores
            the run serves); ``None``: no validation data, keep 0.5.
        y_val: their ``[N, C]`` targets, one column per name.
        run_dir: where ``thresholds.json`` goes.
        names: what the thresholds are for (every label, or the positive label).

    Returns:
        The thresholds.
    """
    tuned = scores is not None and y_val is not None
    thresholds = tune_thresholds(y_val, np.asarray(scores)) if tuned else np.full(len(names), DEFAULT_THRESHOLD)
    save_thresholds(run_dir, names, thresholds, tuned_on="validation data" if tuned else None)
    logger.info("decision thresholds %s", dict(zip(names, np.round(thresholds, 4).tolist())))
    return thresholds
