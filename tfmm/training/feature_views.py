"""Augmented views of frozen image features (``--feature-views N``): the feature cache's form of
image augmentation.

With every used encoder frozen, the head trains on cached features (:mod:`tfmm.training.feature_cache`),
so ``--augment`` would have to run the image encoder on every augmented batch. Instead,
:func:`cached_view_features` passes each training image N times through the augmentation
(:func:`tfmm.training.feature_cache.view_augment`: ``--augment``'s layers, ``light`` when it is
``none``) and the frozen encoder, once, and stores the ``[N x rows, D]`` features beside the plain
ones; :func:`tfmm.training.cached_fit.fit_with_cached_features` trains on the originals and the
copies. View ``v`` is drawn with seed ``VIEW_SEED + v`` whatever the run's seed, so every run and
every stage-1 head of a head ensemble on the same rows shares one entry.
"""

from __future__ import annotations

import keras
import numpy as np

from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest
from tfmm.models.augmentation import ImageAugmentation
from tfmm.training.feature_cache import cache_folder, cache_key, encoder_inputs, load_or_extract, view_augment

VIEW_SEED = 1000


def _view_features(encoder, manifest: Manifest, *, config: RunConfig, views: int, mode: str,
                   batch_size: int, verbose) -> np.ndarray:
    """The encoder's features of ``views`` augmented copies of every row's image, ``[views * N, D]``
    (view 0's rows first). Augmentation runs eagerly, batch by batch, seeded per view."""
    ds = encoder_inputs(manifest, "image", config=config, batch_size=batch_size)
    batches = -(-len(manifest) // batch_size)
    progress = keras.utils.Progbar(views * batches, unit_name="batch") if verbose not in (0, False) else None
    out = []
    for view in range(views):
        augment = ImageAugmentation(mode, seed=VIEW_SEED + view)
        for images in ds:
            out.append(np.asarray(encoder.predict_on_batch(augment(images, training=True)), dtype=np.float32))
            if progress is not None:
                progress.add(1)
    return np.concatenate(out)


def cached_view_features(
    encoder: keras.Model,
    manifest: Manifest,
    *,
    config: RunConfig,
    cache_dir: str,
    views: int,
    batch_size: int = 32,
    verbose="auto",
) -> tuple:
    """The frozen image encoder's features of ``views`` augmented copies of each row (``--feature-views``).

    Each view passes every image once through the augmentation of :func:`view_augment` (training
    mode, seeded ``VIEW_SEED + view``) and the encoder (inference mode). The entry's key is the
    image features' key plus the number of views, the augmentation and the seed, stored in
    ``CACHE_DIR/image_views-<key>/``.

    Returns:
        ``(features, folder, hit)``: float32 ``[views * N, D]`` (row ``v * N + i`` is view ``v`` of
        ``manifest.frame.iloc[i]``), the cache folder, and whether it was reused.
    """
    mode = view_augment(config)
    key, parts = cache_key("image", encoder, manifest, config,
                           extra={"views": views, "augment": mode, "view_seed": VIEW_SEED})
    return load_or_extract(
        cache_folder(cache_dir, "image_views", key), key, parts, views * len(manifest),
        lambda: _view_features(encoder, manifest, config=config, views=views, mode=mode, batch_size=batch_size,
                               verbose=verbose),
        what=f"image features of {views} augmented views ({mode}) of {len(manifest)} rows", manifest=manifest,
        config=config)
