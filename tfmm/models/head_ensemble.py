"""An ensemble head: ``model.head_ensemble`` copies of a task's head, their scores averaged.

The ensemble is an ordinary ``fusion_head`` model (same inputs, same output width), so
everything that takes a head (training on cached features, calibration, export) takes it too.
Its members are nested models ``member_1`` ... ``member_N``, each built by the task's
``build_head`` with its own initialisation; under ``train.two_stage`` each member is first
trained alone in stage 1 (:mod:`tfmm.training.stages`), which makes the members differ more
than training them together on the average would.
"""

from __future__ import annotations

from typing import Callable

import keras

MEMBER_PREFIX = "member_"
ENSEMBLE_TASKS = ("classification", "binary", "multilabel", "matching")


def member_name(i: int) -> str:
    """The name of member ``i`` (1-based)."""
    return f"{MEMBER_PREFIX}{i}"


def check_supported(config) -> None:
    """Raises ``ValueError`` when ``config.model.head_ensemble`` > 1 asks to average scores that
    cannot be averaged (a task outside ``ENSEMBLE_TASKS``, a CLIP/SigLIP ``encoder``'s head)."""
    mc = config.model
    n = mc.head_ensemble or 1
    if n > 1 and (mc.task not in ENSEMBLE_TASKS or mc.encoder):
        what = f"encoder {mc.encoder!r}" if mc.encoder else f"task {mc.task!r}"
        raise ValueError(f"head_ensemble={n} averages the scores of {n} heads, for tasks {list(ENSEMBLE_TASKS)} "
                         f"with separate encoders; received {what}. Use head_ensemble=1 (--head-ensemble 1).")


def build_head_ensemble(config, feature_dims: dict, build_head: Callable) -> keras.Model:
    """``config.model.head_ensemble`` heads from ``build_head`` over ``feature_dims``, averaged.

    Args:
        config: the run config (``model.head_ensemble`` > 1, ``model.task`` one of
            ``ENSEMBLE_TASKS``, separate encoders).
        feature_dims: ``{"image_features": D_i, "text_features": D_t}`` for the modalities used.
        build_head: the task's ``(config, feature_dims) -> fusion_head``.

    Returns:
        A ``keras.Model`` named ``fusion_head`` whose output is the mean of its members' outputs.

    Raises:
        ValueError: the task's or the encoder's scores cannot be averaged.
    """
    check_supported(config)
    n = config.model.head_ensemble
    inputs = {name: keras.Input(shape=(dim,), dtype="float32", name=name) for name, dim in feature_dims.items()}
    outputs = []
    for i in range(1, n + 1):
        member = build_head(config, feature_dims)
        member.name = member_name(i)
        outputs.append(member(inputs))
    average = keras.layers.Average(dtype="float32", name="ensemble_average")(outputs)
    return keras.Model(inputs, average, name="fusion_head")


def members(head: keras.Model) -> list:
    """The member heads of an ensemble head, in order; ``[]`` for a single head."""
    return [layer for layer in head.layers if layer.name.startswith(MEMBER_PREFIX)]
