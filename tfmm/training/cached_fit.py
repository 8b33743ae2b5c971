"""Training on cached features: the frozen encoders' outputs (:mod:`tfmm.training.feature_cache`)
replace those encoders, and the rest of the model is fit on them.

:func:`fit_with_cached_features` builds a trainer that shares the model's layers
(:func:`build_cached_trainer`), fits it on a ``tf.data`` pipeline over the cached features
(:func:`cached_dataset`, shuffled with the same seed and buffer as
:func:`tfmm.data.pipeline.make_dataset`), so the full model is trained and saved as usual.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest
from tfmm.data.pipeline import make_dataset, pipeline_options
from tfmm.models import augmentation, text
from tfmm.tasks import get_task
from tfmm.training import precision
from tfmm.training.feature_cache import PARTS, cached_features, cached_views, used_modalities
from tfmm.training.feature_views import cached_view_features

logger = logging.getLogger(__name__)


def build_cached_trainer(model: keras.Model, config: RunConfig, cached: Sequence[str]) -> keras.Model:
    """A model sharing ``model``'s layers that takes cached features for ``cached`` modalities.

    Its inputs are ``image_features`` / ``text_features`` (``[B, D]`` float32) for cached
    modalities and the usual raw inputs (``image`` or the token inputs) for the others.
    """
    dc = config.data
    inputs, features = {}, {}
    for modality in used_modalities(config):
        encoder_name, feature_name = PARTS[modality]
        encoder = model.get_layer(encoder_name)
        if modality in cached:
            inputs[feature_name] = keras.Input(shape=(encoder.output.shape[-1],), dtype="float32",
                                               name=feature_name)
            features[feature_name] = inputs[feature_name]
        elif modality == "image":
            inputs["image"] = keras.Input(shape=(dc.image_size, dc.image_size, 3), dtype="float32", name="image")
            images = inputs["image"]
            if any(layer.name == augmentation.LAYER_NAME for layer in model.layers):  # --augment
                images = model.get_layer(augmentation.LAYER_NAME)(images)
            features[feature_name] = encoder(images)
        else:
            tokens = text.text_inputs(dc.sequence_length)
            inputs.update(tokens)
            features[feature_name] = encoder(tokens)
    head = model.get_layer("fusion_head")
    return keras.Model(inputs, head(features), name="tfmm_cached_trainer")


def cached_dataset(
    manifest: Manifest,
    features: dict,
    *,
    config: RunConfig,
    labels: Sequence[str],
    preprocessor=None,
    batch_size: int = 32,
    shuffle: bool = False,
    repeats: int = 1,
) -> tf.data.Dataset:
    """``({feature_name: [B, D], raw inputs...}, targets)`` batches over cached features.

    Shuffling uses ``config.train.seed`` and ``shuffle_buffer`` exactly as
    :func:`tfmm.data.pipeline.make_dataset`, so rows come in the same order as without the cache.
    A modality that is not cached is read by ``make_dataset`` (deterministically) and
    zipped with the cached features. ``repeats`` > 1: ``features`` hold ``repeats`` copies of
    the rows one after the other (the cached views of :func:`fit_with_cached_features`), and
    the targets (and a modality read by ``make_dataset``: each caption once per view) are
    repeated to match.
    """
    tc, task = config.train, get_task(config.model.task)
    raw = [m for m in used_modalities(config) if PARTS[m][1] not in features]
    rows = len(manifest) * repeats
    if repeats > 1 and raw:
        manifest = dataclasses.replace(manifest, frame=pd.concat([manifest.frame] * repeats, ignore_index=True))

    def shuffled(ds):
        if not shuffle:
            return ds
        return ds.shuffle(min(tc.shuffle_buffer, rows), seed=tc.seed,
                          reshuffle_each_iteration=True)

    if not raw:
        targets = tf.nest.map_structure(lambda t: np.concatenate([t] * repeats),
                                        task.encode_targets(manifest, labels))
        ds = shuffled(tf.data.Dataset.from_tensor_slices((features, targets))).batch(batch_size)
    else:
        raw_ds = make_dataset(
            manifest, config=dataclasses.replace(config.data, deterministic=True),
            preprocessor=preprocessor, labels=labels, targets=task.encoding, modalities=raw[0],
            batch_size=batch_size, shuffle=shuffle, seed=tc.seed, shuffle_buffer=tc.shuffle_buffer,
        )
        cached = shuffled(tf.data.Dataset.from_tensor_slices(features)).batch(batch_size)
        ds = tf.data.Dataset.zip(raw_ds, cached).map(
            lambda raw_batch, cached_batch: ({**raw_batch[0], **cached_batch}, raw_batch[1]))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(pipeline_options(dataclasses.replace(config.data, deterministic=True)))


def _save_with(callback: keras.callbacks.Callback, model: keras.Model) -> None:
    """Makes ``callback`` act on ``model`` whatever model ``fit`` hands it."""
    set_model = callback.set_model
    callback.set_model = lambda _fit_model: set_model(model)


def fit_with_cached_features(
    model: keras.Model,
    config: RunConfig,
    train_manifest: Manifest,
    val_manifest: Optional[Manifest] = None,
    *,
    cached: Sequence[str],
    labels: Sequence[str],
    compile_fn: Callable[[keras.Model], None],
    cache_dir: str,
    preprocessor=None,
    strategy: Optional[tf.distribute.Strategy] = None,
    batch_size: int = 32,
    callbacks: Sequence = (),
    verbose="auto",
    class_weight: Optional[dict] = None,
):
    """Fits ``model``'s trainable layers on cached features of its frozen encoders.

    Args:
        model: the full model from ``build_model`` (its layers are trained in place).
        config: the run config.
        train_manifest / val_manifest: checked manifests.
        cached: the modalities to cache (see :func:`cached_modalities`).
        labels: the label vocabulary.
        compile_fn: compiles a model like the full one (``tfmm.training.train.compile_model``).
        cache_dir: the cache root folder.
        preprocessor: the text preprocessor.
        strategy: the distribution strategy ``model`` was built under.
        batch_size: the global batch size.
        callbacks: ``fit`` callbacks; ``ModelCheckpoint``s save the full model.
        verbose: ``fit``/``predict`` verbosity.
        class_weight: ``fit``'s ``class_weight`` (see :func:`tfmm.training.losses.class_weights`).

    Returns:
        The ``keras.callbacks.History`` of the fit.
    """
    strategy = strategy or tf.distribute.get_strategy()
    splits = {"train": train_manifest, "val": val_manifest}
    features = {split: {} for split in splits}
    for modality in cached:
        encoder_name, feature_name = PARTS[modality]
        for split, manifest in splits.items():
            if manifest is not None:
                features[split][feature_name], _, _ = cached_features(
                    model.get_layer(encoder_name), modality, manifest, config=config,
                    cache_dir=cache_dir, preprocessor=preprocessor, batch_size=batch_size,
                    verbose=verbose,
                )
    views = cached_views(config, cached)
    if views:  # the originals, then each augmented view of them; the other features repeated to match
        augmented, _, _ = cached_view_features(
            model.get_layer(PARTS["image"][0]), train_manifest, config=config, cache_dir=cache_dir,
            views=views, batch_size=batch_size, verbose=verbose)
        features["train"] = {name: np.concatenate([x, augmented] if name == PARTS["image"][1] else [x] * (1 + views))
                             for name, x in features["train"].items()}
        logger.info("training on %d rows: %d training rows and %d augmented views of their images",
                    len(train_manifest) * (1 + views), len(train_manifest), views)
    with strategy.scope(), precision.dtype_policy(config.train.mixed_precision):
        trainer = build_cached_trainer(model, config, cached)
        compile_fn(trainer)
    common = dict(config=config, labels=labels, preprocessor=preprocessor, batch_size=batch_size)
    train_ds = cached_dataset(train_manifest, features["train"], shuffle=True, repeats=1 + views, **common)
    val_ds = cached_dataset(val_manifest, features["val"], **common) if val_manifest is not None else None
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.ModelCheckpoint):
            _save_with(callback, model)  # checkpoints hold the full model, as without the cache
        if hasattr(callback, "full_model"):  # tfmm callbacks that save the full model
            callback.full_model = model
        if hasattr(callback, "scoring_ds"):  # tfmm callbacks that score the validation rows:
            callback.scoring_ds = val_ds  # the trainer scores their cached features
    logger.info("training %s on cached %s features (%d trainable weights)", trainer.name,
                "+".join(cached), len(trainer.trainable_weights))
    # shuffle=False: train_ds is shuffled already (seeded, as without the cache).
    return trainer.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs,
                       callbacks=list(callbacks), verbose=verbose, shuffle=False, class_weight=class_weight)
