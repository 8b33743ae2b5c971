"""Evaluation and prediction on a trained run directory.

``evaluate`` scores a labeled manifest and writes the report (``metrics.json``, per-class
CSV, plots; see :mod:`tfmm.reports`), optionally with a modality ablation; ``predict``
gives top-k labels per row. Metrics are computed from the confusion matrix, so every number in
``metrics.json`` can be traced back to it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm import curves, reports
from tfmm import data as tfdata
from tfmm import text
from tfmm.config import RunConfig, load_config
from tfmm.tasks import class_summary
from tfmm.train import CONFIG_FILE, LABELS_FILE, MODEL_FILE, TOKENIZER_DIR

logger = logging.getLogger(__name__)

METRICS_FILE = reports.METRICS_FILE


@dataclasses.dataclass
class LoadedRun:
    """A trained run loaded back from its directory."""

    run_dir: str
    config: RunConfig
    labels: list
    model: keras.Model
    preprocessor: object

    def dataset(self, manifest: tfdata.Manifest, *, with_labels: bool = True, batch_size: Optional[int] = None):
        """The run's input pipeline over ``manifest`` (no shuffling)."""
        return tfdata.make_dataset(
            manifest, config=self.config.data, preprocessor=self.preprocessor,
            labels=self.labels if with_labels else None, task=self.config.model.task,
            modalities=self.config.model.modalities,
            batch_size=batch_size or self.config.train.batch_size,
        )


def load_run(run_dir: str) -> LoadedRun:
    """Loads config, labels, text preprocessor and ``model.keras`` from a run directory.

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished tfmm run (names the missing file).
    """
    for name in (CONFIG_FILE, LABELS_FILE, MODEL_FILE):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(
                f"{run_dir!r} is not a finished tfmm run: {name} is missing "
                "(train one with `tfmm train --output-dir DIR`)"
            )
    config = load_config(os.path.join(run_dir, CONFIG_FILE))
    labels = tfdata.load_labels(os.path.join(run_dir, LABELS_FILE))
    import tfmm.model  # noqa: F401  (registers tfmm layers)
    safe_mode = True
    if config.model.uses_text:
        if text.parse_text_spec(config.model.text_encoder).kind == "tfhub":
            import tfmm.hub  # noqa: F401  (registers HubTextEncoder)
            # HubTextEncoder reloads its SavedModel handles, which Keras safe mode refuses;
            # only the handles recorded by this run's own config.yaml are loaded.
            safe_mode = False
        else:
            import keras_hub  # noqa: F401  (registers the KerasHub backbone classes)
    model = keras.models.load_model(os.path.join(run_dir, MODEL_FILE), compile=False, safe_mode=safe_mode)
    preprocessor = None
    if config.model.uses_text:
        saved = os.path.join(run_dir, TOKENIZER_DIR)
        preprocessor = text.load_text_preprocessor(
            config.model.text_encoder, config.data.sequence_length,
            saved_tokenizer=saved if os.path.isdir(saved) else None,
        )
    return LoadedRun(os.path.abspath(run_dir), config, labels, model, preprocessor)


def predict_scores(run: LoadedRun, manifest: tfdata.Manifest) -> np.ndarray:
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


def _class_ids(manifest: tfdata.Manifest, labels: Sequence[str]) -> np.ndarray:
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
    run: LoadedRun, manifest: tfdata.Manifest, *, full_metrics: Optional[dict] = None,
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
        See :func:`tfmm.reports.ablation_summary`; keys ``full``, ``image_blanked``,
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
        data: a labeled manifest (path, DataFrame or :class:`~tfmm.data.Manifest`).
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
        from tfmm import task_eval

        return task_eval.evaluate_task(run, data, report_dir=report_dir)
    manifest = data if isinstance(data, tfdata.Manifest) else tfdata.read_manifest(data, run.config.data)
    manifest = tfdata.check_manifest(
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
        reports.write_json(ablation, os.path.join(out_dir, reports.ABLATION_FILE))
        metrics = {**metrics, "ablation": ablation}
    return metrics


def top_k(scores: np.ndarray, labels: Sequence[str], k: int) -> list:
    """``[(labels, scores)]`` per row, the ``k`` best sorted by descending score."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [([labels[j] for j in row], [float(scores[i, j]) for j in row]) for i, row in enumerate(order)]


def predict(run, data, *, k: int = 5, zero_shot_labels: Optional[Sequence[str]] = None,
            prompt: Optional[str] = None) -> list:
    """Top-k predictions for every row of a manifest (labels optional).

    Args:
        run: a run directory or a :class:`LoadedRun`.
        data: a manifest (path, DataFrame or :class:`~tfmm.data.Manifest`).
        k: labels per row.
        zero_shot_labels: contrastive runs: classify the images among these labels
            (see :func:`tfmm.task_eval.zero_shot_predict`).
        prompt: the zero-shot prompt template (default ``"a photo of a {}"``).

    Returns:
        One dict per row, in order: ``row``, ``labels``, ``scores`` and, when the manifest
        has labels, ``true_label``. Matching, multilabel and contrastive runs give their own
        keys (see :func:`tfmm.task_eval.predict_task`).
    """
    if prompt is not None and zero_shot_labels is None:
        raise ValueError(f"prompt is only used with zero_shot_labels; received prompt {prompt!r} and no labels")
    run = run if isinstance(run, LoadedRun) else load_run(run)
    if zero_shot_labels is not None or run.config.model.task in ("multilabel", "matching", "contrastive"):
        from tfmm import task_eval

        if zero_shot_labels is not None:
            return task_eval.zero_shot_predict(run, data, zero_shot_labels, k=k,
                                               prompt=prompt or task_eval.contrastive.DEFAULT_PROMPT)
        return task_eval.predict_task(run, data, k=k)
    manifest = data if isinstance(data, tfdata.Manifest) else tfdata.read_manifest(
        data, run.config.data, require_labels=False
    )
    manifest = tfdata.check_manifest(
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
