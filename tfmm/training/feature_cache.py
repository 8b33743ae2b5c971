"""Feature cache: run frozen encoders once, train the remaining layers on their outputs.

With ``--freeze-image`` and/or ``--freeze-text``, every epoch of plain training recomputes
the frozen encoder's forward pass (VGG16 at 224x224: ~13 images/s on 2 CPU cores) while
only the layers after it learn. :func:`fit_with_cached_features` instead

1. computes each frozen encoder's features for the training and validation rows once
   (non-shuffled, with a progress bar) and stores them as ``features.npy`` in
   ``CACHE_DIR/<modality>-<key>/`` (``CACHE_DIR``: ``RUN/feature_cache`` or ``--cache-dir``);
2. builds a *trainer* model that shares the full model's layer objects: cached features go
   straight into ``fusion_head``, a branch that is not frozen still runs its encoder on raw
   inputs;
3. fits the trainer on a ``tf.data`` pipeline over the cached features, shuffled with the
   same seed and buffer as :func:`tfmm.data.pipeline.make_dataset`, so batches hold the same rows
   in the same order as without the cache.

Training updates the shared layers, so the full model (saved as ``model.keras`` by
:func:`tfmm.training.train.train`) is trained, and evaluation and export are unchanged.

The key (sha256) covers everything features depend on: modality, encoder name/spec, a
digest of the encoder's actual weight values (which identifies ImageNet, a local file, a
preset or seeded random weights alike), its dtype policy, image size or sequence length,
pooling and the tokenizer's vocabulary, the preprocessing version (:data:`PREPROCESSING_VERSION`),
and the rows in order: each image file's content digest (or the prepared TFRecords'
digests), each caption. Change any of them and the features are recomputed; nothing has
to be deleted by hand. A cache folder is written under a temporary name and renamed when
complete, so an interrupted extraction is never reused.

Same results: for encoders without dropout (VGG16, ResNet: BatchNorm is in inference mode
when frozen), cached and uncached training with the same seed give the same weights within
float tolerance. Keras 3 still applies a frozen encoder's *internal dropout* during plain
training (BERT's 0.1), while cached features are computed in inference mode, so for a frozen
BERT with dropout the two runs differ by that noise (the cached one is the usual
"frozen feature extractor").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest, encode_labels
from tfmm.data.pipeline import make_dataset, pipeline_options
from tfmm.models import text
from tfmm.training import precision

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Bump when tfmm.data.decode_image or the text packing changes what an encoder is fed.
PREPROCESSING_VERSION = "decode_image:rgb,bilinear,float32;text:bert_pack/1"
DEFAULT_CACHE_DIR = "feature_cache"
FEATURES_FILE = "features.npy"
KEY_FILE = "key.json"

# modality -> (encoder layer name in build_model's model, fusion_head input name)
PARTS = {"image": ("image_encoder", "image_features"), "text": ("text_encoder", "text_features")}


def _used_modalities(config: RunConfig) -> list:
    return [m for m in ("image", "text") if getattr(config.model, f"uses_{m}")]


def frozen_modalities(config: RunConfig) -> list:
    """The used modalities whose encoder is frozen (``freeze_image`` / ``freeze_text``)."""
    mc = config.model
    return [m for m in _used_modalities(config) if getattr(mc, f"freeze_{m}")]


def cached_modalities(
    config: RunConfig, *, strategy: Optional[tf.distribute.Strategy] = None, manifests: Sequence = ()
) -> list:
    """Which encoders' features :func:`tfmm.training.train.train` caches (empty: train as usual).

    ``train.cache_features`` ``None`` (auto) and ``True`` cache every frozen encoder;
    ``False`` caches none.

    Raises:
        ValueError: ``cache_features`` is ``True`` but no used encoder is frozen.
    """
    wanted = config.train.cache_features
    frozen = frozen_modalities(config)
    if wanted is False:
        return []
    if not frozen:
        if wanted:
            raise ValueError(
                "cache_features=True (--cache-features) needs a frozen encoder; received "
                f"freeze_image={config.model.freeze_image}, freeze_text={config.model.freeze_text} "
                f"with modalities={config.model.modalities!r}. Add --freeze-image and/or "
                "--freeze-text, or drop --cache-features."
            )
        return []
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        logger.warning("feature cache: not used under MultiWorkerMirroredStrategy (each worker "
                       "would write the same files); training the full model")
        return []
    partial = len(frozen) < len(_used_modalities(config))
    if partial and any(m is not None and m.records is not None for m in manifests):
        logger.warning("feature cache: with only the %s encoder frozen, prepared (TFRecord) data "
                       "cannot be aligned with cached features; training the full model", frozen[0])
        return []
    return frozen


def _weights_digest(layer: keras.Layer) -> str:
    digest = hashlib.sha256()
    for weight in layer.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_digest(manifest: Manifest, modality: str) -> str:
    """Digest of what the encoder reads, row by row, in order."""
    digest = hashlib.sha256()
    frame = manifest.frame
    if modality == "text":
        digest.update(json.dumps(frame["text"].tolist(), ensure_ascii=False).encode("utf-8"))
    elif manifest.records is not None:
        digest.update(json.dumps(frame["row"].astype(int).tolist()).encode())
        for path in manifest.records:
            digest.update(_file_digest(path).encode())
    else:
        for path in frame["image"]:
            digest.update(_file_digest(path).encode())
    return digest.hexdigest()


def _tokenizer_identity(preprocessor) -> dict:
    tokenizer = getattr(preprocessor, "tokenizer", None)
    out = {"type": type(preprocessor).__name__}
    if tokenizer is not None and hasattr(tokenizer, "get_vocabulary"):
        vocab = "\n".join(tokenizer.get_vocabulary())
        out["vocabulary"] = hashlib.sha256(vocab.encode("utf-8")).hexdigest()
        out["lowercase"] = bool(getattr(tokenizer, "lowercase", False))
    return out


def cache_key(
    modality: str, encoder: keras.Model, manifest: Manifest, config: RunConfig, preprocessor=None
) -> tuple:
    """The cache key of one encoder's features over one manifest.

    Returns:
        ``(key, parts)``: the sha256 hex digest and the dict it was computed from.
    """
    mc, dc = config.model, config.data
    parts = {
        "format": CACHE_FORMAT,
        "preprocessing": PREPROCESSING_VERSION,
        "modality": modality,
        "weights": _weights_digest(encoder),
        "dtype_policy": encoder.dtype_policy.name,
        "rows": len(manifest),
        "content": _content_digest(manifest, modality),
    }
    if modality == "image":
        parts.update(encoder=mc.image_encoder.lower(), image_size=dc.image_size)
    else:
        parts.update(encoder=mc.text_encoder, pooling=mc.text_pooling,
                     sequence_length=dc.sequence_length, tokenizer=_tokenizer_identity(preprocessor))
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return key, parts


def cache_folder(cache_dir: str, modality: str, key: str) -> str:
    """Where the features with ``key`` are stored."""
    return os.path.join(cache_dir, f"{modality}-{key[:32]}")


def _load(folder: str, key: str, rows: int) -> Optional[np.ndarray]:
    try:
        with open(os.path.join(folder, KEY_FILE), encoding="utf-8") as f:
            if json.load(f).get("key") != key:
                return None
        features = np.load(os.path.join(folder, FEATURES_FILE))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("feature cache %s is unreadable (%s); recomputing it", folder, e)
        return None
    if features.ndim != 2 or features.shape[0] != rows:
        logger.warning("feature cache %s holds %s features for %d rows; recomputing it",
                       folder, features.shape, rows)
        return None
    return features


def _store(folder: str, key: str, parts: dict, features: np.ndarray, info: dict) -> None:
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, FEATURES_FILE), features)
    with open(os.path.join(tmp, KEY_FILE), "w", encoding="utf-8") as f:
        json.dump({"key": key, "parts": parts, "shape": list(features.shape), **info}, f, indent=2)
    shutil.rmtree(folder, ignore_errors=True)  # a stale or unreadable entry
    os.replace(tmp, folder)


def extract_features(
    encoder: keras.Model,
    modality: str,
    manifest: Manifest,
    *,
    config: RunConfig,
    preprocessor=None,
    batch_size: int = 32,
    verbose="auto",
) -> np.ndarray:
    """Runs ``encoder`` over ``manifest`` in row order (inference mode).

    Args:
        encoder: ``build_model(config).get_layer("image_encoder")`` or ``"text_encoder"``.
        modality: ``"image"`` or ``"text"``.
        manifest: the rows (a file manifest or a prepared folder).
        config: the run config (image size, sequence length).
        preprocessor: the text preprocessor (text only).
        batch_size: examples per forward pass.
        verbose: ``model.predict``'s progress bar setting.

    Returns:
        float32 ``[N, D]`` features, row ``i`` for ``manifest.frame.iloc[i]``.
    """
    # Row order matters (features are matched to rows by position): force determinism.
    dc = dataclasses.replace(config.data, deterministic=True, cache_in_memory=False)
    ds = make_dataset(
        manifest, config=dc, preprocessor=preprocessor if modality == "text" else None,
        modalities=modality, batch_size=batch_size,
    )
    if modality == "image":
        ds = ds.map(lambda features: features["image"])
    return np.asarray(encoder.predict(ds, verbose=verbose), dtype=np.float32)


def cached_features(
    encoder: keras.Model,
    modality: str,
    manifest: Manifest,
    *,
    config: RunConfig,
    cache_dir: str,
    preprocessor=None,
    batch_size: int = 32,
    verbose="auto",
) -> tuple:
    """The encoder's features over ``manifest``: from the cache, or extracted and stored.

    Returns:
        ``(features, folder, hit)``: float32 ``[N, D]``, the cache folder, and whether it
        was reused.

    Example:
        >>> enc = model.get_layer("image_encoder")
        >>> feats, folder, hit = cached_features(enc, "image", manifest, config=cfg,
        ...                                      cache_dir="runs/a/feature_cache")
    """
    key, parts = cache_key(modality, encoder, manifest, config, preprocessor)
    folder = cache_folder(cache_dir, modality, key)
    features = _load(folder, key, len(manifest))
    if features is not None:
        logger.info("feature cache hit: %s features of %d rows from %s", modality, len(manifest), folder)
        return features, folder, True
    logger.info("feature cache miss: extracting %s features of %d rows (%s) into %s",
                modality, len(manifest), manifest.source, folder)
    features = extract_features(encoder, modality, manifest, config=config, preprocessor=preprocessor,
                                batch_size=batch_size, verbose=verbose)
    info = {"source": manifest.source, "image_weights": config.model.image_weights}
    _store(folder, key, parts, features, info)
    return features, folder, False


def build_cached_trainer(model: keras.Model, config: RunConfig, cached: Sequence[str]) -> keras.Model:
    """A model sharing ``model``'s layers that takes cached features for ``cached`` modalities.

    Its inputs are ``image_features`` / ``text_features`` (``[B, D]`` float32) for cached
    modalities and the usual raw inputs (``image`` or the token inputs) for the others.
    """
    dc = config.data
    inputs, features = {}, {}
    for modality in _used_modalities(config):
        encoder_name, feature_name = PARTS[modality]
        encoder = model.get_layer(encoder_name)
        if modality in cached:
            inputs[feature_name] = keras.Input(shape=(encoder.output.shape[-1],), dtype="float32",
                                               name=feature_name)
            features[feature_name] = inputs[feature_name]
        elif modality == "image":
            inputs["image"] = keras.Input(shape=(dc.image_size, dc.image_size, 3), dtype="float32", name="image")
            features[feature_name] = encoder(inputs["image"])
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
) -> tf.data.Dataset:
    """``({feature_name: [B, D], raw inputs...}, targets)`` batches over cached features.

    Shuffling uses ``config.train.seed`` and ``shuffle_buffer`` exactly as
    :func:`tfmm.data.pipeline.make_dataset`, so rows come in the same order as without the cache.
    A modality that is not cached is read by ``make_dataset`` (deterministically) and
    zipped with the cached features.
    """
    tc, task = config.train, config.model.task
    raw = [m for m in _used_modalities(config) if PARTS[m][1] not in features]

    def shuffled(ds):
        if not shuffle:
            return ds
        return ds.shuffle(min(tc.shuffle_buffer, len(manifest)), seed=tc.seed, reshuffle_each_iteration=True)

    if not raw:
        targets = encode_labels(manifest, labels, task)
        ds = shuffled(tf.data.Dataset.from_tensor_slices((features, targets))).batch(batch_size)
    else:
        raw_ds = make_dataset(
            manifest, config=dataclasses.replace(config.data, deterministic=True),
            preprocessor=preprocessor, labels=labels, task=task, modalities=raw[0],
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
    with strategy.scope(), precision.dtype_policy(config.train.mixed_precision):
        trainer = build_cached_trainer(model, config, cached)
        compile_fn(trainer)
    common = dict(config=config, labels=labels, preprocessor=preprocessor, batch_size=batch_size)
    train_ds = cached_dataset(train_manifest, features["train"], shuffle=True, **common)
    val_ds = cached_dataset(val_manifest, features["val"], **common) if val_manifest is not None else None
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.ModelCheckpoint):
            _save_with(callback, model)  # checkpoints hold the full model, as without the cache
        if hasattr(callback, "full_model"):  # tfmm callbacks that save or score the full model
            callback.full_model = model
    logger.info("training %s on cached %s features (%d trainable weights)", trainer.name,
                "+".join(cached), len(trainer.trainable_weights))
    return trainer.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs,
                       callbacks=list(callbacks), verbose=verbose)
