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

Augmented views (``--feature-views N``, set by the ``balanced`` and ``best`` presets for their
stage 1): with every used encoder frozen, it also stores the image
encoder's features of N augmented copies of each training image (``--augment``'s layers,
seeded), in ``CACHE_DIR/image_views-<key>/`` (:mod:`tfmm.training.feature_views`), and the head
trains on the originals and the copies: the augmentation of an image branch at the cost of N
more passes of the encoder, once. Memory: ``(1 + N) x rows x D`` float32 features.

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
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest
from tfmm.data.pipeline import make_dataset
from tfmm.files import publish_dir
from tfmm.models import text
from tfmm.tasks import get_task

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Bump when tfmm.data.decode_image or the text packing changes what an encoder is fed.
PREPROCESSING_VERSION = "decode_image:rgb,png_alpha_over_white,bilinear,float32;text:bert_pack/1"
FEATURES_FILE = "features.npy"
KEY_FILE = "key.json"

# modality -> (encoder layer name in build_model's model, fusion_head input name)
PARTS = {"image": ("image_encoder", "image_features"), "text": ("text_encoder", "text_features")}


def used_modalities(config: RunConfig) -> list:
    return [m for m in ("image", "text") if getattr(config.model, f"uses_{m}")]


def frozen_modalities(config: RunConfig) -> list:
    """The used modalities whose encoder is frozen (``freeze_image`` / ``freeze_text``)."""
    mc = config.model
    return [m for m in used_modalities(config) if getattr(mc, f"freeze_{m}")]


def augmented_modalities(config: RunConfig) -> list:
    """The used modalities whose encoder input is randomly augmented in training (``augment``)."""
    return ["image"] if config.model.augment != "none" and config.model.uses_image else []


def feature_views(config: RunConfig) -> int:
    """How many augmented views of each training image's frozen features are cached and trained
    on (``train.feature_views``): 0 unless the image is used and its encoder frozen (a trained
    text encoder then reads each row's caption once per view).

    Raises:
        ValueError: views asked for with ``task: contrastive``, whose in-batch negatives would
            then include copies of the positive pair's own caption.
    """
    views = config.train.feature_views or 0
    if views and get_task(config.model.task).in_batch_negatives:
        raise ValueError(f"feature_views={views} (--feature-views) does not fit task {config.model.task!r}: copies of "
                         "a row would be each other's in-batch negatives; received both. Drop --feature-views.")
    if not views or "image" not in frozen_modalities(config):
        return 0
    return views


def cached_views(config: RunConfig, cached: Sequence[str]) -> int:
    """The augmented views an epoch adds to each training row: :func:`feature_views` when the
    image features are among ``cached`` (what :func:`cached_modalities` chose), else 0."""
    return feature_views(config) if "image" in cached else 0


def view_augment(config: RunConfig) -> str:
    """The augmentation that makes the cached views: ``model.augment``, ``light`` when ``none``."""
    return config.model.augment if config.model.augment != "none" else "light"


def cacheable_modalities(config: RunConfig) -> list:
    """The frozen modalities whose features can be stored: not augmented in training, or augmented
    into a fixed number of cached views (:func:`feature_views`)."""
    augmented = [] if feature_views(config) else augmented_modalities(config)
    return [m for m in frozen_modalities(config) if m not in augmented]


def cached_modalities(
    config: RunConfig, *, strategy: Optional[tf.distribute.Strategy] = None, manifests: Sequence = ()
) -> list:
    """Which encoders' features :func:`tfmm.training.train.train` caches (empty: train as usual).

    ``train.cache_features`` ``None`` (auto) and ``True`` cache every frozen encoder whose
    input is not augmented (``model.augment``: its features change every epoch, one INFO log
    line says so); ``False`` caches none.

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
                f"freeze_image={bool(config.model.freeze_image)}, freeze_text={bool(config.model.freeze_text)} "
                f"with modalities={config.model.modalities!r}. Add --freeze-image and/or "
                "--freeze-text, or drop --cache-features."
            )
        return []
    augmented = [m for m in frozen if m not in cacheable_modalities(config)]
    if augmented:
        logger.log(logging.WARNING if wanted else logging.INFO,
                   "feature cache: not caching the frozen %s encoder's features: --augment %s changes its "
                   "input every epoch, so it runs on each augmented batch", augmented[0], config.model.augment)
        frozen = cacheable_modalities(config)
        if not frozen:
            return []
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        logger.warning("feature cache: not used under MultiWorkerMirroredStrategy (each worker "
                       "would write the same files); training the full model")
        return []
    partial = len(frozen) < len(used_modalities(config))
    if partial and any(m is not None and m.records is not None for m in manifests):
        logger.warning("feature cache: with only the %s encoder frozen, prepared (TFRecord) data "
                       "cannot be aligned with cached features; training the full model", frozen[0])
        return []
    return frozen


def head_only_cached(config: RunConfig, strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether :func:`tfmm.training.train.train` trains only a head, on cached features of every
    used encoder (so epochs take milliseconds): every used encoder frozen and its input not
    augmented, the cache not turned off, and not under ``MultiWorkerMirroredStrategy`` (see
    :func:`cached_modalities`)."""
    used = used_modalities(config)
    return (bool(used) and cacheable_modalities(config) == used and config.train.cache_features is not False
            and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))


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
    modality: str, encoder: keras.Model, manifest: Manifest, config: RunConfig, preprocessor=None,
    extra: Optional[dict] = None,
) -> tuple:
    """The cache key of one encoder's features over one manifest.

    ``extra``: more parts the features depend on (the augmented views of
    :mod:`tfmm.training.feature_views`), added to the dict before it is hashed.

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
        parts.update(encoder=(mc.encoder or mc.image_encoder).lower(), image_size=dc.image_size)
    else:  # a dual encoder (--encoder) names both branches' encoder
        parts.update(encoder=mc.encoder or mc.text_encoder, pooling=mc.text_pooling,
                     sequence_length=dc.sequence_length, tokenizer=_tokenizer_identity(preprocessor))
    parts.update(extra or {})
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return key, parts


def cache_folder(cache_dir: str, modality: str, key: str) -> str:
    """Where the features with ``key`` are stored."""
    return os.path.join(cache_dir, f"{modality}-{key[:32]}")


def load_entry(folder: str, key: str, rows: int) -> Optional[np.ndarray]:
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


def store_entry(folder: str, key: str, parts: dict, features: np.ndarray, info: dict) -> None:
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, FEATURES_FILE), features)
    with open(os.path.join(tmp, KEY_FILE), "w", encoding="utf-8") as f:
        json.dump({"key": key, "parts": parts, "shape": list(features.shape), **info}, f, indent=2)
    shutil.rmtree(folder, ignore_errors=True)  # a stale or unreadable entry
    publish_dir(tmp, folder)


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
    ds = encoder_inputs(manifest, modality, config=config, preprocessor=preprocessor, batch_size=batch_size)
    return np.asarray(encoder.predict(ds, verbose=verbose), dtype=np.float32)


def encoder_inputs(manifest: Manifest, modality: str, *, config: RunConfig, preprocessor=None,
                   batch_size: int = 32) -> tf.data.Dataset:
    """Batches of what ``modality``'s encoder reads (images, or the token inputs), in row order."""
    # Row order matters (features are matched to rows by position): force determinism.
    dc = dataclasses.replace(config.data, deterministic=True, cache_in_memory=False)
    ds = make_dataset(
        manifest, config=dc, preprocessor=preprocessor if modality == "text" else None,
        modalities=modality, batch_size=batch_size,
    )
    if modality == "image":
        ds = ds.map(lambda features: features["image"])
    return ds


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
    return load_or_extract(
        cache_folder(cache_dir, modality, key), key, parts, len(manifest),
        lambda: extract_features(encoder, modality, manifest, config=config, preprocessor=preprocessor,
                                 batch_size=batch_size, verbose=verbose),
        what=f"{modality} features of {len(manifest)} rows", manifest=manifest, config=config)


def load_or_extract(folder: str, key: str, parts: dict, rows: int, extract, *, what: str, manifest: Manifest,
                    config: RunConfig) -> tuple:
    """The entry in ``folder`` when its key is ``key`` (``rows`` rows), else ``extract()``'s
    features, stored there; logs the hit or the miss, naming ``what`` and where.

    Returns:
        ``(features, folder, hit)``.
    """
    features = load_entry(folder, key, rows)
    if features is not None:
        logger.info("feature cache hit: %s from %s", what, folder)
        return features, folder, True
    logger.info("feature cache miss: extracting %s (%s) into %s", what, manifest.source, folder)
    features = extract()
    store_entry(folder, key, parts, features, {"source": manifest.source, "image_weights": config.model.image_weights})
    return features, folder, False
