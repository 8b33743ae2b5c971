"""Plots for reports and TensorBoard: confusion matrix, ROC/PR curves, reliability diagram,
training curves, validation examples.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no
global backend, no display needed), then saved to a file (:func:`save_png`) or encoded as
PNG bytes for ``tf.summary.image`` (:func:`figure_to_png`).
"""

from __future__ import annotations

import io
import logging
import textwrap
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

logger = logging.getLogger(__name__)

_ANNOTATE_MAX_CLASSES = 30


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure) -> bytes:
    """Encodes ``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Figure, path: str) -> str:
    """Writes ``fig`` to ``path`` as PNG; returns ``path``."""
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def confusion_matrix_figure(cm, labels: Sequence[str], *, title: str = "Confusion matrix") -> Figure:
    """Heat map of a confusion matrix (rows: true, columns: predicted).

    Cells are coloured by the row-normalised rate (recall per true class), so rare and
    common classes read alike, and annotated with counts (up to 30 classes).

    Example:
        >>> fig = confusion_matrix_figure([[5, 1], [0, 4]], ["cat", "dog"])
    """
    cm = np.asarray(cm)
    n = len(labels)
    if cm.shape != (n, n):
        raise ValueError(f"cm must be [{n}, {n}] for {n} labels; received shape {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(4 + 0.45 * n, 30)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= _ANNOTATE_MAX_CLASSES:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rate[i, j] > 0.5 else "black")
    return fig


def curves_figure(curves: Mapping[str, tuple], *, kind: str) -> Figure:
    """ROC or precision-recall curves, one line per label.

    Args:
        curves: ``{label: (x, y, area)}``: ``(fpr, tpr, roc_auc)`` for ``kind="roc"``,
            ``(recall, precision, average_precision)`` for ``kind="pr"``.
        kind: ``"roc"`` or ``"pr"``.
    """
    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be one of ['pr', 'roc']; received {kind!r}")
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    for name, (x, y, area) in curves.items():
        label = f"{name} ({'AUC' if kind == 'roc' else 'AP'} {area:.3f})"
        if kind == "pr":  # precision P_k holds over (R_{k-1}, R_k], as average precision sums it
            ax.step(x, y, where="pre", label=label)
        else:
            ax.plot(x, y, label=label)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC curve")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall curve")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    return fig


def reliability_figure(curves: Mapping[str, tuple], *, title: str = "Reliability diagram") -> Figure:
    """A (top-label) reliability diagram: accuracy against mean confidence per bin, one line
    per variant (e.g. ``uncalibrated``, ``calibrated``), and the diagonal of perfect calibration.

    Args:
        curves: ``{name: (mean confidence, accuracy, ece)}`` over the non-empty bins (see
            :func:`tfmm.evaluation.calibration.reliability_curve`).
        title: the figure's title.

    Example:
        >>> fig = reliability_figure({"uncalibrated": ([0.55, 0.95], [0.5, 0.7], 0.15)})
    """
    if not curves:
        raise ValueError("curves must hold at least one {name: (confidence, accuracy, ece)} entry; received none")
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for name, (confidence, accuracy, ece) in curves.items():
        ax.plot(confidence, accuracy, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence (predicted label's score)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def training_curves_figure(history: Mapping[str, Sequence[float]], metric: Optional[str] = None) -> Figure:
    """Loss and one metric per epoch, train vs validation, side by side.

    Args:
        history: ``{"loss": [...], "val_loss": [...], "accuracy": [...], ...}`` as in
            ``History.history``.
        metric: the metric to plot next to the loss (default: ``accuracy`` when logged,
            else the first other metric; the loss alone when there is none).
    """
    if "loss" not in history:
        raise ValueError(f"history has no 'loss'; received keys {sorted(history)}")
    if metric is None:
        others = [k for k in history if not k.startswith("val_") and k not in ("loss", "learning_rate")]
        metric = "accuracy" if "accuracy" in history else (others[0] if others else None)
    panels = ["loss"] + ([metric] if metric else [])
    fig = _figure(5.5 * len(panels), 4)
    for i, name in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history:
                values = list(history[key])
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def examples_figure(
    images: Optional[np.ndarray],
    captions: Sequence[str],
    predicted: Sequence[str],
    scores: Sequence[float],
    true: Optional[Sequence[str]] = None,
    *,
    columns: int = 4,
) -> Figure:
    """A grid of examples: image, caption, prediction (green if right, red if wrong).

    Args:
        images: ``[K, H, W, 3]`` pixels in ``[0, 255]``, or ``None`` (text-only models).
        captions: the ``K`` captions.
        predicted: the predicted label of each example.
        scores: its score.
        true: the true labels, when known.
        columns: examples per row.
    """
    k = len(captions)
    columns = max(1, min(columns, k))
    rows = -(-k // columns)
    fig = _figure(3.2 * columns, 3.6 * rows if images is not None else 1.6 * rows)
    for i in range(k):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if images is not None:
            ax.imshow(np.clip(np.asarray(images[i]), 0, 255).astype("uint8"))
        else:
            ax.set_axis_off()
        right = true is None or predicted[i] == true[i]
        lines = textwrap.wrap(str(captions[i]), 38)[:3]
        lines.append(f"pred: {predicted[i]} ({scores[i]:.2f})")
        if true is not None:
            lines.append(f"true: {true[i]}")
        ax.set_title("\n".join(lines), fontsize=7, color="green" if right else "red")
    return fig
