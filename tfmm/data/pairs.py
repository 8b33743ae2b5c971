"""Image-text pair tasks on the manifest side: labels, negatives and pair ids.

Two tasks read a manifest as a list of (image, caption) pairs:

- ``matching``: the label column says whether the caption describes the image (``1``) or
  not (``0``). A manifest of positive pairs only (no label column, or every label ``1``)
  gets negatives from :func:`add_negatives` (``--negatives N``): each image paired with
  ``N`` captions of other rows, drawn with a seeded generator.
- ``contrastive``: every row is a positive pair; the label column is optional and unused.
  Its training targets are :func:`pair_ids`: which rows share an image or a caption, so
  that duplicates in a batch are not pushed apart as if they were negatives.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pandas as pd

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest, build_label_vocab

logger = logging.getLogger(__name__)

PAIR_TASKS = ("matching", "contrastive")
MATCH_LABELS = ("0", "1")  # labels[1] is the positive class, as for task "binary"


def labels_required(config: RunConfig) -> bool:
    """Whether a training manifest must have a label column for ``config``'s task.

    ``contrastive`` never needs one; ``matching`` does not when ``--negatives`` makes them.
    """
    task = config.model.task
    if task == "contrastive":
        return False
    if task == "matching":
        return config.data.negatives == 0
    return True


def fixed_labels(task: str) -> Optional[list]:
    """The label vocabulary a task fixes in advance (``None``: read from the data)."""
    if task == "matching":
        return list(MATCH_LABELS)
    if task == "contrastive":
        return []
    return None


def label_vocab(manifest: Manifest, task: str) -> list:
    """The run's labels: fixed for pair tasks, else :func:`tfmm.data.manifest.build_label_vocab`."""
    fixed = fixed_labels(task)
    return fixed if fixed is not None else build_label_vocab(manifest, task)


def only_positives(manifest: Manifest) -> bool:
    """True when the manifest has no label column or every label is ``1``."""
    return not manifest.has_labels or bool((manifest.frame["label"].str.strip() == "1").all())


def add_negatives(manifest: Manifest, n: int, *, seed: int = 0) -> Manifest:
    """Adds ``n`` negative rows per positive row: its image with another row's caption.

    Captions are drawn (seeded) from the other positive rows, never the row's own caption,
    nor any caption the manifest pairs with that image as a positive. Rows without a label
    column count as positives (label ``1``); negative rows get label ``0`` and the ``row``
    number of the row whose image they reuse.

    Args:
        manifest: the pairs; labels, when present, must be ``0``/``1``.
        n: negatives per positive row (0: the manifest is returned with labels set).
        seed: the same seed gives the same negatives.

    Returns:
        A new :class:`~tfmm.data.manifest.Manifest`: the original rows, then the negatives.

    Raises:
        ValueError: ``n`` is negative, or fewer than two distinct captions exist.

    Example:
        >>> m = add_negatives(read_manifest("pairs.csv", require_labels=False), 1, seed=0)
        >>> m.frame["label"].value_counts().to_dict()
        {'1': 100, '0': 100}
    """
    if n < 0:
        raise ValueError(f"negatives must be >= 0; received {n}")
    frame = manifest.frame.copy()
    if not manifest.has_labels:
        frame["label"] = "1"
    frame["label"] = frame["label"].str.strip()
    if n == 0:
        return Manifest(frame, manifest.source, manifest.root)
    positives = frame[frame["label"] == "1"].reset_index(drop=True)
    captions = positives["text"].to_numpy(dtype=str)
    if len(set(captions)) < 2:
        raise ValueError(
            f"{manifest.source}: negatives need at least 2 distinct captions among the "
            f"positive rows; received {len(set(captions))}"
        )
    taken = set(zip(positives["image"], positives["text"]))
    rng = np.random.default_rng(seed)
    rows = []
    for rec in positives.itertuples(index=False):
        chosen = set()
        # Rejection sampling: with >= 2 captions a valid one exists unless this image is
        # paired with every caption; the attempt cap keeps that corner case finite.
        for _ in range(50 * n):
            if len(chosen) == n:
                break
            caption = captions[rng.integers(len(captions))]
            if caption != rec.text and (rec.image, caption) not in taken and caption not in chosen:
                chosen.add(caption)
        rows += [{"row": rec.row, "image": rec.image, "text": c, "label": "0"} for c in sorted(chosen)]
    negatives = pd.DataFrame(rows, columns=frame.columns)
    logger.info("%s: added %d negative pair(s) to %d positive(s) (seed %d)",
                manifest.source, len(negatives), len(positives), seed)
    out = pd.concat([frame, negatives], ignore_index=True)
    return Manifest(out, manifest.source, manifest.root)


def prepare_manifest(manifest: Manifest, config: RunConfig, *, seed: int) -> Manifest:
    """Readies a checked manifest for ``config``'s task (a no-op for other tasks).

    ``matching``: adds ``config.data.negatives`` negatives per positive (labels ``1`` when
    the manifest has none). ``contrastive``: gives the manifest a (placeholder) label
    column, so the input pipeline yields its :func:`pair_ids` targets.

    Raises:
        ValueError: ``negatives`` is set for a task other than ``matching``, or a
            matching manifest without labels has ``negatives`` 0.
    """
    task, negatives = config.model.task, config.data.negatives
    if negatives and task != "matching":
        raise ValueError(f"negatives only applies to task 'matching'; received task {task!r} "
                         f"with negatives={negatives}")
    if task == "matching":
        if not manifest.has_labels and not negatives:
            raise ValueError(
                f"{manifest.source}: task 'matching' needs a label column (1: the caption "
                "matches the image, 0: it does not) or --negatives N to generate negatives"
            )
        if negatives:
            return add_negatives(manifest, negatives, seed=seed)
        if only_positives(manifest):
            logger.warning("%s: every pair is labeled 1 (a match); the model cannot learn to "
                           "reject captions. Add rows labeled 0 or pass --negatives N.", manifest.source)
        return manifest
    if task == "contrastive" and not manifest.has_labels:
        frame = manifest.frame.copy()
        frame["label"] = ""
        return Manifest(frame, manifest.source, manifest.root)
    return manifest


