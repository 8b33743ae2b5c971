"""Evaluation and prediction on a trained run directory.

``evaluate`` scores a labeled manifest and writes ``metrics.json``; ``predict`` gives
top-k labels per row. Metrics are computed from the confusion matrix, so every number in
``metrics.json`` can be traced back to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Sequence

import keras
import numpy as np

from tfmm import data as tfdata
from tfmm import text
from tfmm.config import RunConfig, load_config
from tfmm.train import CONFIG_FILE, LABELS_FILE, MODEL_FILE, TOKENIZER_DIR

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


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
    if config.model.uses_text and text.parse_text_spec(config.model.text_encoder).kind == "keras_hub":
        import keras_hub  # noqa: F401  (registers the KerasHub backbone classes)
    model = keras.models.load_model(os.path.join(run_dir, MODEL_FILE), compile=False)
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
    weights = support / total
    present = support > 0
    return {
        "n_examples": int(cm.sum()),
        "accuracy": float(tp.sum() / total),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
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
        "confusion_matrix": cm.tolist(),
    }


def evaluate(run, data, *, report_dir: Optional[str] = None) -> dict:
    """Scores a labeled manifest with a trained run and writes ``metrics.json``.

    Args:
        run: a run directory or a :class:`LoadedRun`.
        data: a labeled manifest (path, DataFrame or :class:`~tfmm.data.Manifest`).
        report_dir: where ``metrics.json`` goes (default: the run directory).

    Returns:
        The metrics dict (see :func:`compute_metrics`).

    Raises:
        tfmm.data.ManifestError: bad rows, or labels the model does not know.
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    task = run.config.model.task
    if task in ("multilabel", "matching", "contrastive"):  # their metrics: tfmm.task_eval
        from tfmm import task_eval

        return task_eval.evaluate_task(run, data, report_dir=report_dir)
    manifest = data if isinstance(data, tfdata.Manifest) else tfdata.read_manifest(data, run.config.data)
    manifest = tfdata.check_manifest(
        manifest, task=task, labels=run.labels, skip_bad_rows=run.config.data.skip_bad_rows
    )
    scores = class_scores(predict_scores(run, manifest), task)
    index = {name: i for i, name in enumerate(run.labels)}
    y_true = np.array([index[v.strip()] for v in manifest.frame["label"]])
    metrics = compute_metrics(y_true, scores.argmax(axis=1), run.labels)
    out_dir = report_dir or run.run_dir
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    logger.info("evaluated %d rows: accuracy %.4f, macro F1 %.4f", metrics["n_examples"],
                metrics["accuracy"], metrics["f1_macro"])
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
        manifest, task=run.config.model.task, skip_bad_rows=run.config.data.skip_bad_rows
    )
    scores = class_scores(predict_scores(run, manifest), run.config.model.task)
    records = []
    for rec, (names, values) in zip(manifest.frame.itertuples(index=False),
                                    top_k(scores, run.labels, min(k, len(run.labels)))):
        out = {"row": int(rec.row), "labels": names, "scores": values}
        if manifest.has_labels:
            out["true_label"] = rec.label
        records.append(out)
    return records
