"""Evaluation and prediction for the ``multilabel``, ``matching`` and ``contrastive`` tasks.

:func:`tfmm.evaluation.evaluate.evaluate` and :func:`tfmm.evaluation.evaluate.predict` hand runs of these tasks
to :func:`evaluate_task` and :func:`predict_task`; zero-shot classification with a
contrastive run is :func:`zero_shot_predict`.

What each task writes to ``metrics.json`` (besides ``task`` and ``n_examples``):

- ``multilabel``: subset ``accuracy``, ``hamming_loss``, micro / macro / weighted
  precision, recall and F1, ``per_class`` (with ``roc_auc`` and ``threshold``), per-label
  ``confusion_matrix``, at the thresholds of ``RUN/thresholds.json``;
- ``matching``: ``accuracy``, ``roc_auc``, ``f1``, ``precision``, ``recall`` at the
  ``threshold`` of ``RUN/thresholds.json``, plus the 2-class macro numbers, ``per_class``
  and ``confusion_matrix`` of :func:`tfmm.evaluation.metrics.compute_metrics` (labels ``0``, ``1``);
- ``contrastive``: recall@1/5/10 for image -> text and text -> image search over the
  manifest's pairs, their mean, the chance level and the learned ``temperature``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.data import pairs
from tfmm.data.manifest import Manifest, check_manifest, encode_labels, pair_ids, read_manifest
from tfmm.data.pipeline import make_dataset
from tfmm.data.validation import read_table
from tfmm.evaluation.metrics import compute_metrics, predict_scores
from tfmm.run_dir import LoadedRun, METRICS_FILE, load_run
from tfmm.tasks import contrastive
from tfmm.tasks.metrics import matching_metrics, multilabel_metrics, roc_auc, top_k
from tfmm.tasks.thresholds import load_thresholds, threshold_labels

logger = logging.getLogger(__name__)

TASKS = ("multilabel", "matching", "contrastive")
_PLACEHOLDER_TEXT = "-"  # zero-shot: the manifest's captions are not used


def _read(run: LoadedRun, data, *, require_labels: bool) -> Manifest:
    if isinstance(data, Manifest):
        return data
    return read_manifest(data, run.config.data, require_labels=require_labels)


def _matching_manifest(run: LoadedRun, manifest: Manifest) -> tuple:
    """Adds negatives to a positives-only manifest when the run was trained with them."""
    negatives = run.config.data.negatives
    if not pairs.only_positives(manifest):
        return manifest, 0
    if not negatives:
        if not manifest.has_labels:
            raise ValueError(
                f"{manifest.source}: evaluating a matching run needs a label column (0/1), or a run "
                "trained with --negatives N (its negatives are then generated the same way)"
            )
        logger.warning("%s: every pair is labeled 1: roc_auc is undefined", manifest.source)
        return manifest, 0
    seed = run.config.train.seed + 2  # not the training (seed) nor validation (seed + 1) draw
    out = pairs.add_negatives(manifest, negatives, seed=seed)
    return out, int(len(out) - len(manifest))


def evaluate_task(run, data, *, report_dir: Optional[str] = None) -> dict:
    """Scores a manifest with a multilabel, matching or contrastive run; writes ``metrics.json``.

    Args:
        run: a run directory or a :class:`~tfmm.run_dir.LoadedRun`.
        data: manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`). Multilabel: labels
            required; matching: ``0``/``1`` labels, or positive pairs only when the run was
            trained with ``--negatives`` (negatives are then generated, seeded);
            contrastive: pairs, labels unused.
        report_dir: where ``metrics.json`` goes (default: the run directory).

    Returns:
        The metrics dict (see the module docstring).

    Raises:
        tfmm.data.ManifestError: bad rows, or labels the model does not know.
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    task, config = run.config.model.task, run.config
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}; received {task!r}")
    manifest = _read(run, data, require_labels=task == "multilabel" or pairs.labels_required(config))
    manifest = check_manifest(
        manifest, task=task, labels=run.labels if task != "contrastive" else None,
        skip_bad_rows=config.data.skip_bad_rows, config=config.data,
    )
    if task == "multilabel":
        metrics = _multilabel(run, manifest)
    elif task == "matching":
        manifest, generated = _matching_manifest(run, manifest)
        metrics = _matching(run, manifest)
        metrics["generated_negatives"] = generated
    else:
        image_emb, text_emb = embed_pairs(run, manifest)
        metrics = contrastive.retrieval_metrics(image_emb, text_emb, pair_ids(manifest))
        metrics = {"task": "contrastive", **metrics,
                   "temperature": 1.0 / contrastive.logit_scale(run.model)}
    out_dir = report_dir or run.run_dir
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    logger.info("evaluated %d rows: %s", metrics["n_examples"], format_summary(metrics).splitlines()[0])
    return metrics


def _multilabel(run: LoadedRun, manifest: Manifest) -> dict:
    scores = predict_scores(run, manifest)
    thresholds = load_thresholds(run.run_dir, run.labels)
    y_true = encode_labels(manifest, run.labels, "multilabel")
    metrics = multilabel_metrics(y_true, scores >= thresholds, run.labels)
    for i, label in enumerate(run.labels):
        metrics["per_class"][label]["roc_auc"] = roc_auc(y_true[:, i], scores[:, i])
        metrics["per_class"][label]["threshold"] = float(thresholds[i])
    return metrics


def _matching(run: LoadedRun, manifest: Manifest) -> dict:
    scores = predict_scores(run, manifest)[:, 0]
    threshold = float(load_thresholds(run.run_dir, threshold_labels("matching", run.labels))[0])
    y_true = encode_labels(manifest, run.labels, "matching")[:, 0].astype(int)
    base = compute_metrics(y_true, (scores >= threshold).astype(int), run.labels)
    return {**base, **matching_metrics(y_true, scores, threshold)}


def embed_pairs(run: LoadedRun, manifest: Manifest) -> tuple:
    """``(image_embeddings [N, D], text_embeddings [N, D])`` of a manifest's rows."""
    model = contrastive.pair_embedding_model(run.model)
    image_emb, text_emb = model.predict(run.dataset(manifest, with_labels=False), verbose=0)
    return np.asarray(image_emb), np.asarray(text_emb)


def _records(manifest: Manifest, values: Sequence[dict]) -> list:
    records = []
    for rec, extra in zip(manifest.frame.itertuples(index=False), values):
        out = {"row": int(rec.row), **extra}
        if manifest.has_labels and rec.label.strip():
            out["true_label"] = rec.label.strip()
        records.append(out)
    return records


def predict_task(run, data, *, k: int = 5) -> list:
    """Per-row predictions of a multilabel, matching or contrastive run.

    Returns:
        One dict per row, in order, with ``row`` and ``true_label`` (when known), and:
        multilabel: ``labels``/``scores`` (top ``k``) and ``predicted`` (every label whose
        score reaches its threshold); matching: ``match_score`` and ``match`` (bool);
        contrastive: ``similarity`` (cosine of the row's image and caption),
        ``image_embedding`` and ``text_embedding``.
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    task = run.config.model.task
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}; received {task!r}")
    manifest = check_manifest(_read(run, data, require_labels=False), task=task,
                                     skip_bad_rows=run.config.data.skip_bad_rows, config=run.config.data)
    if task == "contrastive":
        image_emb, text_emb = embed_pairs(run, manifest)
        values = [{"similarity": float(a @ b), "image_embedding": a.tolist(), "text_embedding": b.tolist()}
                  for a, b in zip(image_emb, text_emb)]
        return _records(manifest, values)
    scores = predict_scores(run, manifest)
    names = threshold_labels(task, run.labels)
    thresholds = load_thresholds(run.run_dir, names)
    if task == "matching":
        values = [{"match_score": float(s), "match": bool(s >= thresholds[0])} for s in scores[:, 0]]
    else:
        values = [{"labels": top_names, "scores": top_scores,
                   "predicted": [run.labels[j] for j in np.flatnonzero(row >= thresholds)]}
                  for row, (top_names, top_scores) in zip(scores, top_k(scores, run.labels, min(k, len(run.labels))))]
    return _records(manifest, values)


def _image_manifest(run: LoadedRun, data) -> Manifest:
    """A manifest whose captions may be missing: zero-shot only reads its images."""
    if isinstance(data, Manifest):
        frame = data.frame.copy()
        frame["text"] = _PLACEHOLDER_TEXT
        return Manifest(frame, data.source, data.root)
    problems = []
    if isinstance(data, pd.DataFrame):
        df, source, root = data.copy(), "<DataFrame>", None
    else:
        if not os.path.isfile(str(data)):
            raise FileNotFoundError(f"manifest not found: {data}")
        (df, problems), source = read_table(str(data)), str(data)
        root = os.path.dirname(os.path.abspath(str(data)))
    df[run.config.data.text_col] = _PLACEHOLDER_TEXT
    manifest = read_manifest(df, run.config.data, root=root, require_labels=False)
    return Manifest(manifest.frame, source, manifest.root, problems)


def zero_shot_predict(run, data, labels: Sequence[str], *, prompt: str = contrastive.DEFAULT_PROMPT,
                      k: int = 5) -> list:
    """Classifies the images of a manifest with a contrastive run and label prompts.

    Each label is put into ``prompt`` (``"a photo of a {}"`` -> ``"a photo of a cat"``), the
    prompts are embedded by the text tower and every image is scored against them:
    softmax over the labels of ``cosine / temperature``. No classifier head is trained.

    Args:
        run: a contrastive run directory or :class:`~tfmm.run_dir.LoadedRun`.
        data: manifest (path, DataFrame or Manifest) with an image column; captions are
            not needed; a label column, when present, is reported as ``true_label``.
        labels: the candidate labels.
        prompt: the template, with ``{}`` where the label goes.
        k: how many labels per row.

    Returns:
        One dict per row: ``row``, ``labels`` and ``scores`` (top ``k``, descending),
        ``prompts`` (top ``k``, the texts that were matched) and ``true_label`` when known.

    Raises:
        ValueError: the run is not contrastive, no labels, or a prompt without ``{}``.

    Example:
        >>> tfmm.predict("runs/clip", "photos.csv", zero_shot_labels=["cat", "dog"],
        ...              prompt="a photo of a {}")
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    if run.config.model.task != "contrastive":
        raise ValueError(
            "zero-shot labels need a run trained with --task contrastive (a shared image-text "
            f"space); received a run of task {run.config.model.task!r}"
        )
    prompts = contrastive.zero_shot_prompts(labels, prompt)
    names = [str(x).strip() for x in labels if str(x).strip()]
    manifest = check_manifest(_image_manifest(run, data), task="contrastive",
                                     skip_bad_rows=run.config.data.skip_bad_rows, config=run.config.data)
    images = make_dataset(manifest, config=run.config.data, modalities="image",
                                 batch_size=run.config.train.batch_size)
    image_emb = contrastive.image_embedding_model(run.model).predict(images.map(lambda f: f["image"]), verbose=0)
    text_tower = contrastive.text_embedding_model(run.model)
    prompt_emb = np.asarray(text_tower(run.preprocessor(tf.constant(prompts)), training=False))
    scores = contrastive.zero_shot_scores(image_emb, prompt_emb, contrastive.logit_scale(run.model))
    index = {name: i for i, name in enumerate(names)}
    values = [{"labels": top_names, "scores": top_scores, "prompts": [prompts[index[n]] for n in top_names]}
              for top_names, top_scores in top_k(scores, names, min(k, len(names)))]
    return _records(manifest, values)


def format_summary(metrics: dict) -> str:
    """A few lines for the terminal: the task's headline numbers."""
    task = metrics.get("task")
    if task == "contrastive":
        lines = [f"retrieval over {metrics['n_examples']} pairs (chance recall@1 "
                 f"{metrics['chance_recall@1']:.4f}, temperature {metrics['temperature']:.4f}):"]
        ks = sorted(int(key.rsplit("@", 1)[1]) for key in metrics if key.startswith("image_to_text_recall@"))
        lines.append("".ljust(16) + "".join(f"recall@{k}".rjust(12) for k in ks))
        for direction in ("image_to_text", "text_to_image"):
            lines.append(direction.ljust(16) + "".join(f"{metrics[f'{direction}_recall@{k}']:.4f}".rjust(12) for k in ks))
        return "\n".join(lines)
    if task == "matching":
        auc = metrics["roc_auc"]
        return (f"matching: accuracy {metrics['accuracy']:.4f}, ROC-AUC "
                f"{'n/a' if auc is None else f'{auc:.4f}'}, F1 {metrics['f1']:.4f} at threshold "
                f"{metrics['threshold']:.4f} ({metrics['n_positive']} of {metrics['n_examples']} pairs match)")
    if task == "multilabel":
        return (f"multilabel: micro F1 {metrics['f1_micro']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
                f"exact-match accuracy {metrics['accuracy']:.4f}, hamming loss {metrics['hamming_loss']:.4f}")
    return json.dumps(metrics)
