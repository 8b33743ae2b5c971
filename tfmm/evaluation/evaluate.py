"""Evaluation and prediction on a trained run directory.

``evaluate`` scores a labeled manifest and writes the report (``metrics.json``, per-class
CSV, plots; see :mod:`tfmm.evaluation.reports`), optionally with a modality ablation; ``predict``
gives top-k labels per row. Metrics are computed from the confusion matrix, so every number in
``metrics.json`` can be traced back to it.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmm.data.manifest import Manifest, check_manifest, read_manifest
from tfmm.evaluation import curves, reports
from tfmm.evaluation.metrics import class_scores, predict_scores, score_metrics
from tfmm.models import text
from tfmm.run_dir import ABLATION_FILE, LoadedRun, load_run
from tfmm.tasks.metrics import top_k

logger = logging.getLogger(__name__)


def _curves_for_plots(y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str], task: str) -> dict:
    """``{"roc": {label: (fpr, tpr, auc)}, "pr": {label: (recall, precision, ap)}}``."""
    if task != "binary":
        return {}
    positive = y_true == 1
    out = {"roc": {}, "pr": {}}
    if positive.any() and not positive.all():
        fpr, tpr, _ = curves.roc_curve(positive, scores[:, 1])
        out["roc"][labels[1]] = (fpr, tpr, curves.roc_auc(positive, scores[:, 1]))
    if positive.any():
        precision, recall, _ = curves.precision_recall_curve(positive, scores[:, 1])
        out["pr"][labels[1]] = (recall, precision, curves.average_precision(positive, scores[:, 1]))
    return out


def _class_ids(manifest: Manifest, labels: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    return np.array([index[v.strip()] for v in manifest.frame["label"]])


BLANK_IMAGE_FILLS = ("zeros", "mean")
BLANK_TEXT = "empty caption '' tokenized as usual: [CLS] [SEP] then padding"


def _blanked(ds, modality: str, *, fill=None, blank_text=None):
    """``ds`` with one input replaced, batch by batch, by a constant blank."""
    def blank(features, *rest):
        features = dict(features)
        if modality == "image":
            image = features["image"]
            features["image"] = tf.zeros_like(image) + tf.cast(fill, image.dtype)
        else:
            n = tf.shape(features["token_ids"])[0]
            for key, value in blank_text.items():
                features[key] = tf.tile(value, [n, 1])
        return (features, *rest) if rest else features

    return ds.map(blank, num_parallel_calls=tf.data.AUTOTUNE)


def modality_ablation(
    run: LoadedRun, manifest: Manifest, *, full_metrics: Optional[dict] = None,
    blank_image: str = "zeros",
) -> dict:
    """Re-scores ``manifest`` with each input blanked, to show what the model relies on.

    The same model scores the same rows with, in turn, the image blanked and the text
    blanked; the drop of each metric from the full model says how much that input is
    used (a drop near 0: the model ignores it).

    Blanking: the image becomes a constant image, black (``blank_image="zeros"``,
    the default: every pixel 0) or the per-channel mean pixel of the evaluated images
    (``"mean"``); the text becomes the empty caption, tokenized as usual to
    ``[CLS] [SEP]`` and padding. Only the inputs the model uses are blanked.

    Args:
        run: the loaded run.
        manifest: a checked, labeled manifest.
        full_metrics: the unablated metrics, when already computed.
        blank_image: ``zeros`` or ``mean``.

    Returns:
        See :func:`tfmm.evaluation.reports.ablation_summary`; keys ``full``, ``image_blanked``,
        ``text_blanked``.

    Raises:
        ValueError: unknown ``blank_image``.
    """
    if blank_image not in BLANK_IMAGE_FILLS:
        raise ValueError(f"blank_image must be one of {list(BLANK_IMAGE_FILLS)}; received {blank_image!r}")
    task, mc = run.config.model.task, run.config.model
    y_true = _class_ids(manifest, run.labels)
    results = {"full": full_metrics or score_metrics(
        y_true, class_scores(predict_scores(run, manifest), task), run.labels, task)}
    ds = run.dataset(manifest, with_labels=False)
    blanking = {}
    if mc.uses_image:
        if blank_image == "mean":
            total = ds.reduce(tf.zeros([3], tf.float64), lambda acc, f: acc + tf.reduce_sum(
                tf.cast(f["image"], tf.float64), axis=[0, 1, 2]))
            size = run.config.data.image_size
            fill = (total / (len(manifest) * size * size)).numpy().astype("float32")
            blanking["image"] = f"constant image of the mean pixel {np.round(fill, 1).tolist()} (RGB)"
        else:
            fill = np.zeros([3], "float32")
            blanking["image"] = "black image (every pixel 0)"
        scores = run.model.predict(_blanked(ds, "image", fill=fill), verbose=0)
        results["image_blanked"] = score_metrics(y_true, class_scores(np.asarray(scores), task), run.labels, task)
    if mc.uses_text:
        blank_text = run.preprocessor(tf.constant([""]))
        blanking["text"] = BLANK_TEXT
        scores = run.model.predict(_blanked(ds, "text", blank_text=blank_text), verbose=0)
        results["text_blanked"] = score_metrics(y_true, class_scores(np.asarray(scores), task), run.labels, task)
    ablation = reports.ablation_summary(results, blanking=blanking)
    for name, drop in ablation["drop"].items():
        logger.info("%s: accuracy drop %.4f, macro F1 drop %.4f", name, drop["accuracy"], drop["f1_macro"])
    return ablation


def evaluate(run, data, *, report_dir: Optional[str] = None, ablate: bool = False,
             blank_image: str = "zeros") -> dict:
    """Scores a labeled manifest with a trained run and writes the report files.

    Writes ``metrics.json``, ``per_class.csv``, ``confusion_matrix.png``, and for binary
    tasks ``roc_curve.png`` and ``pr_curve.png``; with ``ablate``, also ``ablation.json``
    (see :func:`modality_ablation`).

    Args:
        run: a run directory or a :class:`LoadedRun`.
        data: a labeled manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`).
        report_dir: where the report files go (default: the run directory).
        ablate: also re-score with the image blanked and with the text blanked.
        blank_image: how the image is blanked for ``ablate``: ``zeros`` or ``mean``.

    Returns:
        The metrics dict (see :func:`compute_metrics` and :func:`score_metrics`), as written
        to ``metrics.json``; with ``ablate``, plus an ``ablation`` key holding what
        ``ablation.json`` holds.

    Raises:
        tfmm.data.ManifestError: bad rows, or labels the model does not know.

    Example:
        >>> metrics = tfmm.evaluate("runs/a", "data/test.csv", report_dir="reports/a", ablate=True)
        >>> metrics["f1_macro"], metrics["ablation"]["drop"]["text_blanked"]["accuracy"]
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    task = run.config.model.task
    if task in ("multilabel", "matching", "contrastive"):  # their metrics: tfmm.task_eval
        from tfmm.evaluation import task_eval

        return task_eval.evaluate_task(run, data, report_dir=report_dir)
    manifest = data if isinstance(data, Manifest) else read_manifest(data, run.config.data)
    manifest = check_manifest(
        manifest, task=task, labels=run.labels, skip_bad_rows=run.config.data.skip_bad_rows,
        config=run.config.data,
    )
    scores = class_scores(predict_scores(run, manifest), task)
    y_true = _class_ids(manifest, run.labels)
    metrics = score_metrics(y_true, scores, run.labels, task)
    out_dir = report_dir or run.run_dir
    reports.write_report(metrics, out_dir, curves=_curves_for_plots(y_true, scores, run.labels, task))
    logger.info("evaluated %d rows: accuracy %.4f, macro F1 %.4f", metrics["n_examples"],
                metrics["accuracy"], metrics["f1_macro"])
    if ablate:
        ablation = modality_ablation(run, manifest, full_metrics=metrics, blank_image=blank_image)
        reports.write_json(ablation, os.path.join(out_dir, ABLATION_FILE))
        metrics = {**metrics, "ablation": ablation}
    return metrics


def predict(run, data, *, k: int = 5, zero_shot_labels: Optional[Sequence[str]] = None,
            prompt: Optional[str] = None) -> list:
    """Top-k predictions for every row of a manifest (labels optional).

    Args:
        run: a run directory or a :class:`LoadedRun`.
        data: a manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`).
        k: labels per row.
        zero_shot_labels: contrastive runs: classify the images among these labels
            (see :func:`tfmm.evaluation.task_eval.zero_shot_predict`).
        prompt: the zero-shot prompt template (default ``"a photo of a {}"``).

    Returns:
        One dict per row, in order: ``row``, ``labels``, ``scores`` and, when the manifest
        has labels, ``true_label``. Matching, multilabel and contrastive runs give their own
        keys (see :func:`tfmm.evaluation.task_eval.predict_task`).
    """
    if prompt is not None and zero_shot_labels is None:
        raise ValueError(f"prompt is only used with zero_shot_labels; received prompt {prompt!r} and no labels")
    run = run if isinstance(run, LoadedRun) else load_run(run)
    if zero_shot_labels is not None or run.config.model.task in ("multilabel", "matching", "contrastive"):
        from tfmm.evaluation import task_eval

        if zero_shot_labels is not None:
            return task_eval.zero_shot_predict(run, data, zero_shot_labels, k=k,
                                               prompt=prompt or task_eval.contrastive.DEFAULT_PROMPT)
        return task_eval.predict_task(run, data, k=k)
    manifest = data if isinstance(data, Manifest) else read_manifest(
        data, run.config.data, require_labels=False
    )
    manifest = check_manifest(
        manifest, task=run.config.model.task, skip_bad_rows=run.config.data.skip_bad_rows,
        config=run.config.data,
    )
    scores = class_scores(predict_scores(run, manifest), run.config.model.task)
    records = []
    for rec, (names, values) in zip(manifest.frame.itertuples(index=False),
                                    top_k(scores, run.labels, min(k, len(run.labels)))):
        out = {"row": int(rec.row), "labels": names, "scores": values}
        if manifest.has_labels:
            out["true_label"] = rec.label.strip()
        records.append(out)
    return records
