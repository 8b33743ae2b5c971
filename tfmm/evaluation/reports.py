"""Evaluation report files and text tables.

:func:`write_report` turns a metrics dict (see :func:`tfmm.evaluation.metrics.compute_metrics`) into
the report folder: ``metrics.json``, ``per_class.csv``, ``confusion_matrix.png`` and, for
tasks with scores per label (binary, multi-label), ``roc_curve.png`` and ``pr_curve.png``.
:func:`format_report` and :func:`format_ablation` render the tables the CLI prints.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Mapping, Optional, Sequence

from tfmm import plots
from tfmm.run_dir import CONFUSION_MATRIX_FILE, METRICS_FILE, PER_CLASS_FILE, PR_CURVE_FILE, ROC_CURVE_FILE

logger = logging.getLogger(__name__)


# Metrics compared in the summary and ablation tables (those present are shown).
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                "f1_weighted", "roc_auc", "pr_auc")


def write_json(obj, path: str) -> str:
    """Writes ``obj`` as indented JSON; returns ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    return path


def write_per_class_csv(metrics: Mapping, path: str) -> str:
    """``label,precision,recall,f1,support`` (plus ``roc_auc,pr_auc`` when known), one row
    per label in label order; returns ``path``."""
    roc = metrics.get("roc_auc_per_label") or {}
    pr = metrics.get("pr_auc_per_label") or {}
    columns = ["label", "precision", "recall", "f1", "support"] + (["roc_auc", "pr_auc"] if roc else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for label, m in metrics["per_class"].items():
            row = [label, m["precision"], m["recall"], m["f1"], m["support"]]
            if roc:
                row += [roc.get(label), pr.get(label)]
            writer.writerow(row)
    return path


def write_report(metrics: Mapping, out_dir: str, *, curves: Optional[Mapping] = None) -> list:
    """Writes the evaluation report files into ``out_dir`` (created).

    Args:
        metrics: the metrics dict; must hold ``per_class``, ``labels`` and
            ``confusion_matrix``.
        out_dir: the report folder.
        curves: optional ``{"roc": {label: (fpr, tpr, auc)}, "pr": {label: (recall,
            precision, ap)}}``; each non-empty entry becomes a PNG.

    Returns:
        The paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = [
        write_json(dict(metrics), os.path.join(out_dir, METRICS_FILE)),
        write_per_class_csv(metrics, os.path.join(out_dir, PER_CLASS_FILE)),
        plots.save_png(
            plots.confusion_matrix_figure(metrics["confusion_matrix"], metrics["labels"],
                                          title=f"Confusion matrix ({metrics['n_examples']} examples)"),
            os.path.join(out_dir, CONFUSION_MATRIX_FILE),
        ),
    ]
    for kind, name in (("roc", ROC_CURVE_FILE), ("pr", PR_CURVE_FILE)):
        if curves and curves.get(kind):
            written.append(plots.save_png(plots.curves_figure(curves[kind], kind=kind),
                                          os.path.join(out_dir, name)))
    logger.info("wrote %s", ", ".join(os.path.basename(p) for p in written))
    return written


def _cell(value, width: int) -> str:
    if value is None:
        return "n/a".rjust(width)
    if isinstance(value, float):
        return f"{value:.4f}".rjust(width)
    return str(value).rjust(width)


def format_table(rows: Mapping[str, Mapping], keys: Sequence[str]) -> str:
    """A plain-text table: one line per named dict, one column per key."""
    width = max([len(name) for name in rows] + [4]) + 2
    col = max([len(k) for k in keys] + [8]) + 2
    lines = ["".ljust(width) + "".join(k.rjust(col) for k in keys)]
    for name, values in rows.items():
        lines.append(name.ljust(width) + "".join(_cell(values.get(k), col) for k in keys))
    return "\n".join(lines)


def format_report(metrics: Mapping) -> str:
    """The summary metrics, then the per-class table, as text.

    Example:
        >>> print(format_report(tfmm.evaluate("runs/a", "test.csv")))
    """
    keys = [k for k in SUMMARY_KEYS if k in metrics]
    width = max(len(k) for k in keys) + 2
    lines = [f"{metrics['n_examples']} examples"]
    if metrics.get("positive_label") is not None:
        lines[0] += f" (positive label: {metrics['positive_label']})"
    lines += [k.ljust(width) + _cell(metrics[k], 8) for k in keys] + ["", "per class:"]
    per_class = {label: dict(m) for label, m in metrics["per_class"].items()}
    columns = ["precision", "recall", "f1", "support"]
    roc, pr = metrics.get("roc_auc_per_label"), metrics.get("pr_auc_per_label") or {}
    if roc:
        for label, m in per_class.items():
            m.update(roc_auc=roc.get(label), pr_auc=pr.get(label))
        columns += ["roc_auc", "pr_auc"]
    lines.append(format_table(per_class, columns))
    return "\n".join(lines)


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
