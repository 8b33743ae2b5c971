"""The optimizer of a run: the learning-rate rule, AdamW with a slower rate for the encoders,
and the warmup + cosine schedule.

**Learning rate** (``train.learning_rate``, ``None`` by default): when every used encoder is
frozen, only a freshly initialized head learns, and it needs a head-sized rate
(:data:`HEAD_LEARNING_RATE`, 1e-3: Adam's own default, the best of those measured on the demo
data and on scikit-learn's digits, see ``benchmarks/bench_frozen_defaults.py``); when an encoder
is fine-tuned, the transformer-sized :data:`FINE_TUNE_LEARNING_RATE` (1e-4).
:func:`resolve_train_defaults` writes the value into the config, so ``config.yaml`` holds the
rate that was used.

**Epochs** (``train.epochs``, ``None`` by default): :data:`DEFAULT_EPOCHS`, or
:data:`HEAD_EPOCHS` when only a head trains on cached features (an epoch then takes
milliseconds; early stopping on the validation loss ends the run when it stops improving).

**Encoder rate** (``train.encoder_lr_scale``): :class:`EncoderScaledAdamW` updates the
variables of the ``image_encoder`` / ``text_encoder`` sub-models at ``learning_rate x scale``
and every other variable (projections, fusion, head) at ``learning_rate``, with one optimizer,
so a checkpoint, ``BackupAndRestore`` and ``MirroredStrategy`` see a single ordinary AdamW state.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import keras

from tfmm.config import RunConfig

logger = logging.getLogger(__name__)

HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4
DEFAULT_EPOCHS = 10
HEAD_EPOCHS = 50
# The encoders' share of the learning rate when neither the config nor its preset sets one.
ENCODER_LR_SCALE = 0.1
# The sub-models of build_model whose trainable variables train at learning_rate x encoder_lr_scale.
ENCODER_LAYERS = ("image_encoder", "text_encoder")


def all_encoders_frozen(config: RunConfig) -> bool:
    """Whether every encoder the model uses is frozen (only the layers after them learn); an
    encoder with top blocks unfrozen for partial fine-tuning is not."""
    mc = config.model
    image_frozen = mc.freeze_image and not mc.unfreeze_image_blocks
    text_frozen = mc.freeze_text and not mc.unfreeze_text_layers
    return (image_frozen or not mc.uses_image) and (text_frozen or not mc.uses_text)


def resolve_train_defaults(config: RunConfig, *, head_only_cached: bool = False) -> RunConfig:
    """``config`` with ``train.learning_rate``, ``train.epochs`` and ``train.encoder_lr_scale``
    (:data:`ENCODER_LR_SCALE`) set when left to ``None``.

    Args:
        config: the run config.
        head_only_cached: only a head trains, on cached features (see
            :func:`tfmm.training.feature_cache.cached_modalities`): epochs are cheap.

    Returns:
        The config with those fields set (unchanged when the user set them).

    Example:
        >>> resolve_train_defaults(RunConfig().replace(model={"freeze_image": True,
        ...                        "freeze_text": True})).train.learning_rate
        0.001
    """
    tc, updates = config.train, {}
    if tc.learning_rate is None:
        updates["learning_rate"] = HEAD_LEARNING_RATE if all_encoders_frozen(config) else FINE_TUNE_LEARNING_RATE
    if tc.epochs is None:
        updates["epochs"] = HEAD_EPOCHS if head_only_cached else DEFAULT_EPOCHS
    if tc.encoder_lr_scale is None:
        updates["encoder_lr_scale"] = ENCODER_LR_SCALE
    return config.replace(train=updates) if updates else config


@keras.saving.register_keras_serializable(package="tfmm")
class EncoderScaledAdamW(keras.optimizers.AdamW):
    """AdamW that updates some variables (the encoders') at ``learning_rate x encoder_lr_scale``.

    The variables to slow down are named with :meth:`scale_variables` (by
    :func:`make_optimizer` from the model's ``image_encoder`` / ``text_encoder`` sub-models);
    every other variable trains at ``learning_rate``. Both share one AdamW state, so
    checkpoints and ``BackupAndRestore`` save and restore it like any Keras optimizer, and
    under ``tf.distribute`` each replica's update finds its variable by the same key.
    Weight decay is decoupled as in AdamW, at ``learning_rate`` for every variable.

    Args:
        encoder_lr_scale: the factor (> 0) for the named variables.
        **kwargs: ``keras.optimizers.AdamW`` arguments.

    Example:
        >>> opt = EncoderScaledAdamW(learning_rate=1e-3, encoder_lr_scale=0.1)
        >>> opt.scale_variables(model.get_layer("image_encoder").trainable_variables)
        >>> model.compile(optimizer=opt, loss="categorical_crossentropy")
    """

    def __init__(self, encoder_lr_scale: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not encoder_lr_scale > 0:
            raise ValueError(f"encoder_lr_scale must be > 0; received {encoder_lr_scale!r}")
        self.encoder_lr_scale = float(encoder_lr_scale)
        self._scaled_keys = set()

    def scale_variables(self, variables: Iterable) -> int:
        """Marks ``variables`` to train at ``learning_rate x encoder_lr_scale``; returns how many."""
        keys = {self._var_key(v) for v in variables}
        self._scaled_keys |= keys
        return len(keys)

    def is_scaled(self, variable) -> bool:
        return self._var_key(variable) in self._scaled_keys

    def update_step(self, gradient, variable, learning_rate):
        if self._scaled_keys and self._var_key(variable) in self._scaled_keys:
            learning_rate = keras.ops.multiply(learning_rate, self.encoder_lr_scale)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "encoder_lr_scale": self.encoder_lr_scale}


def _schedule(learning_rate: float, total_steps: int, warmup_fraction: float):
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to 1% of it."""
    total = max(1, total_steps)
    warmup = int(total * warmup_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )


def encoder_variables(model: Optional[keras.Model]) -> list:
    """The trainable variables of ``model``'s encoder sub-models (empty when it has none)."""
    if model is None:
        return []
    names = {layer.name for layer in model.layers}
    return [v for name in ENCODER_LAYERS if name in names for v in model.get_layer(name).trainable_variables]


def make_optimizer(config: RunConfig, steps_per_epoch: int, model: Optional[keras.Model] = None
                   ) -> EncoderScaledAdamW:
    """AdamW with linear warmup then cosine decay over the whole run; ``model``'s trainable
    encoder variables train at ``learning_rate x train.encoder_lr_scale``.

    ``learning_rate`` / ``epochs`` left to ``None`` are resolved by
    :func:`resolve_train_defaults` first.
    """
    tc = resolve_train_defaults(config).train
    optimizer = EncoderScaledAdamW(
        learning_rate=_schedule(tc.learning_rate, steps_per_epoch * tc.epochs, tc.warmup_fraction),
        weight_decay=tc.weight_decay, encoder_lr_scale=tc.encoder_lr_scale,
    )
    scaled = optimizer.scale_variables(encoder_variables(model))
    trainable = len(model.trainable_variables) if model is not None else 0
    if model is not None:
        logger.info("learning rates: %g for %d head variable(s)%s", tc.learning_rate, trainable - scaled,
                    f", {tc.learning_rate * tc.encoder_lr_scale:g} (x{tc.encoder_lr_scale:g}) for {scaled} "
                    "encoder variable(s)" if scaled else " (encoders frozen)")
    return optimizer
