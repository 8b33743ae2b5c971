"""Modality ablation: the same model re-scores the same rows with one input blanked.

The drop of each metric from the full model says how much that input is used (a drop near 0:
the model ignores it). Any task with per-row scores can be ablated; its own
``evaluate_scores`` computes the metrics of each variant.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from tfmm.data.manifest import Manifest
from tfmm.evaluation import reports
from tfmm.run_dir import LoadedRun
from tfmm.tasks import get_task

logger = logging.getLogger(__name__)

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
        manifest: a checked, labeled manifest (as the run's task evaluates it).
        full_metrics: the unablated metrics, when already computed.
        blank_image: ``zeros`` or ``mean``.

    Returns:
        See :func:`tfmm.evaluation.reports.ablation_summary`; keys ``full``, ``image_blanked``,
        ``text_blanked``.

    Raises:
        ValueError: unknown ``blank_image``, or a task without per-row scores (contrastive).
    """
    if blank_image not in BLANK_IMAGE_FILLS:
        raise ValueError(f"blank_image must be one of {list(BLANK_IMAGE_FILLS)}; received {blank_image!r}")
    task, mc = get_task(run.config.model.task), run.config.model

    def metrics_of(scores) -> dict:
        return task.evaluate_scores(run, manifest, np.asarray(scores)).metrics

    results = {"full": full_metrics or metrics_of(run.predict_scores(manifest))}
    ds = run.dataset(manifest)
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
        results["image_blanked"] = metrics_of(scores)
    if mc.uses_text:
        blank_text = run.preprocessor(tf.constant([""]))
        blanking["text"] = BLANK_TEXT
        scores = run.model.predict(_blanked(ds, "text", blank_text=blank_text), verbose=0)
        results["text_blanked"] = metrics_of(scores)
    ablation = reports.ablation_summary(results, blanking=blanking)
    for name, drop in ablation["drop"].items():
        logger.info("%s: accuracy drop %.4f, macro F1 drop %.4f", name, drop["accuracy"], drop["f1_macro"])
    return ablation
