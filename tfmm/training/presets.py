"""Presets: named recipes (``train.preset``) that fill in the options a config leaves open.

A preset is a table of existing options. Options it governs default to ``None`` in the
config ("the preset decides"); any value given (a flag, a YAML key, a ``replace``) wins over
the table. :func:`resolve_preset` writes the table's values into the config once, at the start
of :func:`tfmm.training.train.train`, so the run's ``config.yaml`` holds every resolved value:
``tfmm train --config RUN/config.yaml`` trains the same run, and resolving again changes nothing.

========== ================================================================================
preset     options it sets
========== ================================================================================
none       no preset: every option at its own default (encoders trained whole, one stage)
fast       both encoders frozen, their features computed once and cached, only the fusion
           head trains (epochs take milliseconds; early stopping on the validation loss);
           dropout ``FEATURE_DROPOUT`` on each branch's features
balanced   two stages (:mod:`tfmm.training.stages`): ``ENSEMBLE_HEADS`` ``fast`` heads first,
           each alone with its own seed (``RUN/stage1``, ``RUN/stage1_seed<S>``) on the cached
           features of the training images and of ``FEATURE_VIEWS`` augmented copies of each,
           averaged into one head; then the top ``BALANCED_TEXT_LAYERS`` layers of the text
           encoder unfrozen and fine-tuned with that head, on the same cached image features and
           views (the image encoder stays frozen), at ``BALANCED_LEARNING_RATE`` (the text
           encoder at that x ``BALANCED_ENCODER_LR_SCALE``) for ``BALANCED_EPOCHS`` epochs,
           stopped early on the validation loss; stage 1's weights are kept when no stage-2
           epoch improves on their validation loss
best       ``balanced``'s stage 1, then the top ``BEST_BLOCKS`` blocks of *both* encoders
           fine-tuned for ``BEST_EPOCHS`` epochs with light image augmentation (the image
           encoder runs on every augmented batch: much slower than ``balanced``)
========== ================================================================================

``augment`` is not ``None``-able (``none`` is its default): ``best`` sets ``light`` unless the
config asks for another augmentation; for ``best`` without augmentation, pass
``--preset balanced --unfreeze-image-blocks 2 --unfreeze-text-layers 2 --epochs 10`` instead.
A ``head_seeds`` > 1 given under ``balanced``/``best`` (the best of N stage-1 heads) sets
``head_ensemble`` to 1 (the two exclude each other).

An explicit ``freeze_text: true`` under ``balanced`` keeps that encoder frozen (its
``unfreeze_text_layers`` then defaults to 0), and an explicit ``unfreeze_image_blocks: N``
under ``fast`` or ``balanced`` unfreezes those blocks (``freeze_image`` then defaults to
``false``): the option given wins over the table's other half, for either encoder. A text
encoder with fewer layers than ``BALANCED_TEXT_LAYERS`` needs ``unfreeze_text_layers`` given.
"""

from __future__ import annotations

import logging

from tfmm.config import RunConfig
from tfmm.models.head_ensemble import ENSEMBLE_TASKS
from tfmm.tasks import get_task
from tfmm.training.optimizer import ENCODER_LR_SCALE

logger = logging.getLogger(__name__)

# The balanced recipe, measured on the real-image example (figures in benchmarks/RESULTS.md).
# Stage 2 with the top block of both encoders, trained on the plain images, raised the validation
# loss in every run on the example's split (benchmarks/real_data.py; 0.28 -> 0.30 from the
# averaged heads; 3e-4 moved it further than 1e-4). The text encoder's top 2 layers at 2e-5 (the
# head at 1e-4) on the cached image features and their views lowered it on 7 of 10 random splits
# (benchmarks/stage2_splits.py): test accuracy 0.8926 vs 0.8884 for stage 1 and 0.8810 for
# logistic regression over 1210 test rows.
BALANCED_TEXT_LAYERS = 2
BALANCED_LEARNING_RATE = 1e-4
BALANCED_ENCODER_LR_SCALE = 0.2
BALANCED_EPOCHS = 6
BEST_BLOCKS = 2
BEST_EPOCHS = 10
# The head, measured on frozen Lite0 + MiniLM features of the real-image example over 10 random
# 60/20/20 splits (benchmarks/head_splits.py; figures in benchmarks/RESULTS.md): dropout 0.2 on
# each branch's features, and under two stages the average of 5 heads trained alone (mean test
# accuracy 0.8826 vs 0.8736 for one such head and 0.8810 for logistic regression: a tie).
FEATURE_DROPOUT = 0.2
ENSEMBLE_HEADS = 5
# Stage 1 of the two-stage presets trains on the frozen image features of 4 augmented copies of
# each training image as well as the originals (--feature-views; measured over the same 10
# splits, figures in benchmarks/RESULTS.md).
FEATURE_VIEWS = 4

# What each option is when no preset (or the preset) leaves it open.
NO_PRESET = {
    "model": {"freeze_image": False, "freeze_text": False, "unfreeze_image_blocks": 0, "unfreeze_text_layers": 0,
              "feature_dropout": 0.0, "head_ensemble": 1},
    "train": {"two_stage": False, "head_seeds": 1, "feature_views": 0, "encoder_lr_scale": ENCODER_LR_SCALE},
}
_FROZEN = {"freeze_image": True, "freeze_text": True, "unfreeze_image_blocks": 0, "unfreeze_text_layers": 0}
PRESETS = {
    "none": {},
    "fast": {"model": {**_FROZEN, "feature_dropout": FEATURE_DROPOUT, "head_ensemble": 1},
             "train": {"two_stage": False, "head_seeds": 1, "feature_views": 0}},
    "balanced": {
        "model": {"freeze_image": True, "freeze_text": False, "feature_dropout": FEATURE_DROPOUT,
                  "head_ensemble": ENSEMBLE_HEADS,
                  "unfreeze_image_blocks": 0, "unfreeze_text_layers": BALANCED_TEXT_LAYERS},
        "train": {"two_stage": True, "head_seeds": 1, "feature_views": FEATURE_VIEWS,
                  "learning_rate": BALANCED_LEARNING_RATE, "encoder_lr_scale": BALANCED_ENCODER_LR_SCALE,
                  "epochs": BALANCED_EPOCHS},
    },
    "best": {
        "model": {"freeze_image": False, "freeze_text": False, "feature_dropout": FEATURE_DROPOUT,
                  "head_ensemble": ENSEMBLE_HEADS,
                  "unfreeze_image_blocks": BEST_BLOCKS, "unfreeze_text_layers": BEST_BLOCKS, "augment": "light"},
        "train": {"two_stage": True, "head_seeds": 1, "feature_views": FEATURE_VIEWS,
                  "learning_rate": BALANCED_LEARNING_RATE, "epochs": BEST_EPOCHS},
    },
}
# Options whose "not given" is their default value rather than None.
_SET_WHEN_DEFAULT = {("model", "augment"): "none"}


def preset_table(name: str) -> dict:
    """``{"model": {...}, "train": {...}}``: the options preset ``name`` sets.

    Raises:
        ValueError: ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; received {name!r}")
    return PRESETS[name]


def _open(config: RunConfig, section: str, field: str) -> bool:
    """Whether ``section.field`` was left to the preset."""
    value = getattr(getattr(config, section), field)
    return value is None or _SET_WHEN_DEFAULT.get((section, field), object()) == value


def _given_wins(config: RunConfig, table: dict) -> dict:
    """``table`` without the half of a freeze/unfreeze pair that contradicts the other half given."""
    mc, model = config.model, dict(table.get("model", {}))
    for branch, blocks in (("image", "unfreeze_image_blocks"), ("text", "unfreeze_text_layers")):
        freeze = f"freeze_{branch}"
        if getattr(mc, freeze) and getattr(mc, blocks) is None:
            model[blocks] = 0  # frozen on purpose: nothing of it trains
        elif getattr(mc, blocks) and getattr(mc, freeze) is None:
            model[freeze] = False  # top blocks asked for: the encoder is not frozen whole
    if (config.train.head_seeds or 1) > 1 and mc.head_ensemble is None:
        model["head_ensemble"] = 1  # the best of N heads asked for, not their average
    if mc.head_ensemble is None and (mc.encoder or mc.task not in ENSEMBLE_TASKS):
        model["head_ensemble"] = 1  # scores that cannot be averaged (contrastive, CLIP/SigLIP heads)
    train = dict(table.get("train", {}))
    if config.train.feature_views is None and get_task(mc.task).in_batch_negatives:
        train["feature_views"] = 0  # copies of a row would be each other's in-batch negatives
    return {**table, "model": model, "train": train}


def resolve_preset(config: RunConfig) -> RunConfig:
    """``config`` with every option its preset governs set (values given are kept).

    ``train.learning_rate`` / ``train.epochs`` that the preset leaves open stay ``None`` for
    :func:`tfmm.training.optimizer.resolve_train_defaults`. Idempotent.

    Args:
        config: a run config (``train.preset`` one of ``PRESETS``).

    Returns:
        The resolved config.

    Raises:
        ValueError: ``head_seeds`` > 1 without ``two_stage``.

    Example:
        >>> cfg = resolve_preset(RunConfig().replace(train={"preset": "fast"}))
        >>> cfg.model.freeze_image, cfg.train.two_stage
        (True, False)
    """
    table = _given_wins(config, preset_table(config.train.preset))
    updates = {}
    for section in ("model", "train"):
        fields = {**NO_PRESET.get(section, {}), **table.get(section, {})}
        chosen = {k: v for k, v in fields.items() if _open(config, section, k)}
        if chosen:
            updates[section] = chosen
    resolved = config.replace(**updates) if updates else config
    if resolved.train.head_seeds > 1 and not resolved.train.two_stage:
        raise ValueError(f"head_seeds={resolved.train.head_seeds} needs two_stage (the seeds are stage 1's); "
                         "received two_stage=False. Add --two-stage or drop --head-seeds.")
    if resolved.train.head_seeds > 1 and resolved.model.head_ensemble > 1:
        raise ValueError(f"head_seeds={resolved.train.head_seeds} (fine-tune the best of N stage-1 heads) and "
                         f"head_ensemble={resolved.model.head_ensemble} (fine-tune the average of N heads) exclude "
                         "each other; received both. Drop one of --head-seeds / --head-ensemble.")
    if updates and config.train.preset != "none":  # logged once: resolving again changes nothing
        set_here = {f"{s}.{k}": v for s, fields in updates.items() for k, v in fields.items()
                    if k in table.get(s, {})}
        logger.info("preset %s: %s", config.train.preset,
                    ", ".join(f"{k}={v}" for k, v in set_here.items()) or "every option it sets was given")
    return resolved


def stage1_config(config: RunConfig, seed: int) -> RunConfig:
    """Stage 1 of a two-stage ``config``: the same model and data with both encoders frozen
    and cached (preset ``fast``), no augmentation, the head's own learning rate and epochs
    (:func:`tfmm.training.optimizer.resolve_train_defaults`), trained with ``seed``."""
    return config.replace(
        model={**_FROZEN, "augment": "none", "head_ensemble": 1},
        train={"preset": "fast", "two_stage": False, "head_seeds": 1, "learning_rate": None, "epochs": None,
               "seed": seed, "cache_features": None},
    )
