"""Losses for imbalanced labels: ``--loss focal`` and ``--class-weight balanced``.

**Focal loss** (``train.loss: focal``, ``train.focal_gamma``): the task's cross-entropy is
replaced by its focal counterpart (Lin et al., 2017), which scales each example's loss by
``(1 - p_true) ** gamma`` so the many easy, well-classified examples (most often of the
frequent classes) weigh less than the hard ones:

- a softmax task (``classification``, one-hot targets) gets
  ``keras.losses.CategoricalFocalCrossentropy``;
- a sigmoid task (``binary`` and ``matching`` with ``[N, 1]`` 0/1 targets, ``multilabel`` with
  multi-hot targets) gets ``keras.losses.BinaryFocalCrossentropy``.

Both take the same targets and probabilities as the cross-entropy they replace. ``gamma = 0``
is plain cross-entropy. ``contrastive`` (an in-batch similarity loss) has no focal form.

**Class weights** (``train.class_weight: balanced``): each training example's loss is
multiplied by ``n / (k x count(class))`` (scikit-learn's ``"balanced"`` rule), computed from the
training manifest's labels and passed to ``model.fit(class_weight=...)``. Keras maps targets
to classes with ``argmax`` for one-hot rows and by rounding ``[N, 1]`` 0/1 rows, so it fits
``classification``, ``binary`` and ``matching`` (negatives included); ``multilabel`` rows hold
several classes (``argmax`` would keep one) and ``contrastive`` has no classes, so both refuse.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest

logger = logging.getLogger(__name__)

# The task's cross-entropy -> its focal counterpart (same targets, same probabilities).
FOCAL_LOSSES = {
    keras.losses.CategoricalCrossentropy: keras.losses.CategoricalFocalCrossentropy,
    keras.losses.BinaryCrossentropy: keras.losses.BinaryFocalCrossentropy,
}


def make_loss(task, config: RunConfig) -> keras.losses.Loss:
    """The loss ``model.compile`` gets: the task's own (``loss: auto``) or its focal form.

    Args:
        task: a :class:`~tfmm.tasks.base.Task`.
        config: the run config (``train.loss``, ``train.focal_gamma``).

    Returns:
        A ``keras.losses.Loss``.

    Raises:
        ValueError: ``loss: focal`` for a task whose loss is not a cross-entropy (contrastive).

    Example:
        >>> cfg = RunConfig().replace(train={"loss": "focal", "focal_gamma": 2.0})
        >>> make_loss(get_task("classification"), cfg)  # CategoricalFocalCrossentropy(gamma=2)
    """
    loss = task.loss(config)
    if config.train.loss == "auto":
        return loss
    focal = FOCAL_LOSSES.get(type(loss))
    if focal is None:
        raise ValueError(
            f"loss='focal' (--loss focal) needs a task trained with cross-entropy (classification, "
            f"binary, multilabel, matching); received task {task.name!r}, whose loss is "
            f"{type(loss).__name__}. Drop --loss focal (or use --loss auto) for this task."
        )
    logger.info("loss: %s (gamma %g) instead of %s", focal.__name__, config.train.focal_gamma,
                type(loss).__name__)
    return focal(gamma=config.train.focal_gamma)


def class_weights(task, config: RunConfig, manifest: Manifest, labels: Sequence[str]) -> Optional[dict]:
    """``model.fit``'s ``class_weight``: ``{class id: n / (k x count)}``, or ``None`` when off.

    Args:
        task: a :class:`~tfmm.tasks.base.Task`.
        config: the run config (``train.class_weight``).
        manifest: the training manifest (after the task prepared it: matching's negatives count).
        labels: the label vocabulary (class ``i`` is ``labels[i]``).

    Returns:
        ``None`` for ``class_weight: none``, else a dict from every class id to its weight.

    Raises:
        ValueError: a task whose rows have no single class (multilabel, contrastive), or a class
            with no training rows (its weight would be infinite).

    Example:
        >>> class_weights(get_task("binary"), cfg, train_manifest, ["other", "red"])
        {0: 0.555..., 1: 5.0}
    """
    if config.train.class_weight == "none":
        return None
    if task.encoding.name not in ("one_hot", "index"):
        raise ValueError(
            f"class_weight='balanced' (--class-weight balanced) needs one class per row "
            f"(classification, binary, matching); received task {task.name!r}, whose rows hold "
            f"{'several labels' if task.encoding.multi else 'no class labels'}. Drop --class-weight"
            f"{' or use --loss focal' if task.encoding.multi else ''}."
        )
    ids = task.encoding.class_ids(task.encode_targets(manifest, labels))
    counts = np.bincount(ids, minlength=len(labels))
    if not counts.all():
        missing = [labels[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(
            f"class_weight='balanced' (--class-weight balanced) needs training rows of every class; "
            f"{manifest.source} has none of {missing}. Add rows of those classes or drop --class-weight."
        )
    weights = compute_class_weight("balanced", classes=np.arange(len(labels)), y=ids)
    logger.info("class weights (balanced, n / (k x count)): %s",
                ", ".join(f"{labels[i]}: {w:.3g} ({counts[i]} rows)" for i, w in enumerate(weights)))
    return {i: float(w) for i, w in enumerate(weights)}
