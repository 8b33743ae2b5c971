"""Evaluation report files and text tables.

:func:`write_report` turns a task's :class:`~tfmm.tasks.base.Evaluation` into the report
folder: ``metrics.json`` always; ``per_class.csv`` when the metrics have ``per_class``;
``confusion_matrix.png`` for a single-label confusion matrix; ``roc_curve.png`` and
``pr_curve.png`` for the curves the task gives (binary, matching); ``reliability.png`` for a
calibrated run (classification, binary, matching with a ``calibration.json``), which
:func:`write_tensorboard_png` also puts in TensorBoard.
:func:`format_per_class` and :func:`format_ablation` render the tables the CLI prints.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmm import plots
from tfmm.files import write_json_atomic
from tfmm.run_dir import (
    CONFUSION_MATRIX_FILE, METRICS_FILE, PER_CLASS_FILE, PR_CURVE_FILE, RELIABILITY_FILE, ROC_CURVE_FILE,
)
from tfmm.tasks.classification import SUMMARY_KEYS, format_value

logger = logging.getLogger(__name__)


def write_json(obj, path: str) -> str:
    """Writes ``obj`` as indented JSON (atomically); returns ``path``."""
    write_json_atomic(path, obj)
    return path


def _per_class_columns(metrics: Mapping) -> list:
    """The per-class keys, in first-seen order (precision, recall, f1, support, then extras)."""
    columns = []
    for values in metrics["per_class"].values():
        columns += [k for k in values if k not in columns]
    return columns


def write_per_class_csv(metrics: Mapping, path: str) -> str:
    """``label,precision,recall,f1,support`` (plus the task's extra per-class keys, such as
    ``roc_auc`` and ``threshold``), one row per label in label order; returns ``path``."""
    columns = _per_class_columns(metrics)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label"] + columns)
        for label, m in metrics["per_class"].items():
            writer.writerow([label] + [m.get(k) for k in columns])
    return path


def _single_label_confusion(metrics: Mapping) -> bool:
    matrix = np.asarray(metrics.get("confusion_matrix", []))
    return matrix.ndim == 2 and matrix.shape == (len(metrics.get("labels", [])),) * 2


def write_report(metrics: Mapping, out_dir: str, *, curves: Optional[Mapping] = None) -> list:
    """Writes the evaluation report files into ``out_dir`` (created).

    Args:
        metrics: the metrics dict (see the module docstring for which keys give which file).
        out_dir: the report folder.
        curves: optional ``{"roc": {label: (fpr, tpr, auc)}, "pr": {label: (recall,
            precision, ap)}, "reliability": {name: (confidence, accuracy, ece)}}``; each
            non-empty entry becomes a PNG.

    Returns:
        The paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = [write_json(dict(metrics), os.path.join(out_dir, METRICS_FILE))]
    if "per_class" in metrics:
        written.append(write_per_class_csv(metrics, os.path.join(out_dir, PER_CLASS_FILE)))
    if _single_label_confusion(metrics):
        written.append(plots.save_png(
            plots.confusion_matrix_figure(metrics["confusion_matrix"], metrics["labels"],
                                          title=f"Confusion matrix ({metrics['n_examples']} examples)"),
            os.path.join(out_dir, CONFUSION_MATRIX_FILE),
        ))
    for kind, name in (("roc", ROC_CURVE_FILE), ("pr", PR_CURVE_FILE)):
        if curves and curves.get(kind):
            written.append(plots.save_png(plots.curves_figure(curves[kind], kind=kind),
                                          os.path.join(out_dir, name)))
    if curves and curves.get("reliability"):
        written.append(plots.save_png(reliability_figure(metrics, curves["reliability"]),
                                      os.path.join(out_dir, RELIABILITY_FILE)))
    logger.info("wrote %s", ", ".join(os.path.basename(p) for p in written))
    return written


def reliability_figure(metrics: Mapping, curves: Mapping):
    """The reliability diagram of an evaluation (its title gives the rows and the temperature)."""
    temperature = metrics.get("temperature", 1.0)
    note = f"temperature {temperature:.3f}" if temperature != 1.0 else "not calibrated"
    return plots.reliability_figure(curves, title=f"Reliability ({metrics['n_examples']} examples, {note})")


def write_tensorboard_png(log_dir: str, name: str, png: bytes, *, step: int = 0) -> str:
    """Writes PNG bytes as the TensorBoard image summary ``name`` into ``log_dir``; returns ``log_dir``."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.image(name, tf.image.decode_png(png, channels=4)[tf.newaxis], step=step)
    writer.close()
    return log_dir


def format_table(rows: Mapping[str, Mapping], keys: Sequence[str]) -> str:
    """A plain-text table: one line per named dict, one column per key."""
    width = max([len(name) for name in rows] + [4]) + 2
    col = max([len(k) for k in keys] + [8]) + 2
    lines = ["".ljust(width) + "".join(k.rjust(col) for k in keys)]
    for name, values in rows.items():
        lines.append(name.ljust(width) + "".join(format_value(values.get(k), col) for k in keys))
    return "\n".join(lines)


def format_per_class(metrics: Mapping) -> str:
    """The per-class table of a metrics dict, as text (``per class:`` then one row per label).

    Example:
        >>> print(format_per_class(tfmm.evaluate("runs/a", "test.csv")))
    """
    return "per class:\n" + format_table(metrics["per_class"], _per_class_columns(metrics))


def ablation_summary(results: Mapping[str, Mapping], *, full: str = "full", blanking: Mapping = ()) -> dict:
    """Compares metrics with one input blanked against the full model.

    Args:
        results: ``{"full": metrics, "image_blanked": metrics, ...}``.
        full: the key of the unablated result.
        blanking: how each modality was blanked (recorded as is).

    Returns:
        ``{"blanking", "n_examples", "metrics": {name: {key: value}}, "drop": {name: {key:
        full - blanked}}}`` over :data:`SUMMARY_KEYS` present in the full result; a positive
        drop means the model needs that input.
    """
    keys = [k for k in SUMMARY_KEYS if results[full].get(k) is not None]
    table = {name: {k: m.get(k) for k in keys} for name, m in results.items()}
    drop = {
        name: {k: (table[full][k] - v[k]) if v[k] is not None else None for k in keys}
        for name, v in table.items() if name != full
    }
    return {"blanking": dict(blanking), "n_examples": results[full]["n_examples"],
            "metrics": table, "drop": drop}


def format_ablation(ablation: Mapping) -> str:
    """The ablation as text: one row per metric, one column per variant (full model,
    image blanked, text blanked), each blanked value followed by its change."""
    variants = list(ablation["metrics"])
    keys = list(ablation["metrics"][variants[0]])
    cells = {}
    for name in variants:
        drop = ablation["drop"].get(name, {})
        for k in keys:
            value = ablation["metrics"][name][k]
            text = "n/a" if value is None else f"{value:.4f}"
            if value is not None and drop.get(k) is not None:
                text += f" ({-drop[k]:+.4f})"
            cells[name, k] = text
    key_w = max(len(k) for k in keys) + 2
    col = max([len(n) for n in variants] + [len(c) for c in cells.values()]) + 3
    lines = [f"modality ablation on {ablation['n_examples']} examples (change vs full in brackets):",
             "metric".ljust(key_w) + "".join(n.rjust(col) for n in variants)]
    for k in keys:
        lines.append(k.ljust(key_w) + "".join(cells[n, k].rjust(col) for n in variants))
    for modality, how in ablation["blanking"].items():
        lines.append(f"{modality} blanked: {how}")
    return "\n".join(lines)
