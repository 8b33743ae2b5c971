"""Manifests read as (image, caption) pairs: negatives for a positives-only manifest.

A manifest of positive pairs only (no label column, or every label ``1``) gets negatives
from :func:`add_negatives` (``--negatives N``): each image paired with ``N`` captions of other
rows, drawn with a seeded generator, labeled ``0``. Which tasks use this is theirs to say
(:mod:`tfmm.tasks.matching`).
"""

from __future__ import annotations

import logging
import numpy as np
import pandas as pd

from tfmm.data.manifest import Manifest

logger = logging.getLogger(__name__)

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


def with_empty_labels(manifest: Manifest) -> Manifest:
    """``manifest`` with a label column (empty strings when it had none), so that the input
    pipeline yields targets for it (pair ids do not read the labels)."""
    if manifest.has_labels:
        return manifest
    frame = manifest.frame.copy()
    frame["label"] = ""
    return Manifest(frame, manifest.source, manifest.root, records=manifest.records)
