"""The ``tf.data`` input pipeline over a manifest (:func:`make_dataset`).

The pipeline runs in a fixed order:
list -> shuffle (seeded) -> map(read + decode + resize) -> batch -> map(tokenize) -> prefetch,
or, when the decoded images fit in memory, list -> map(read + decode + resize) -> cache ->
shuffle -> batch -> map(tokenize) -> prefetch (the same seeded order). A folder written by
``tfmm prepare`` (sharded TFRecords, see :mod:`tfmm.data.tfrecords`) replaces the list of files.

When the token arrays of a manifest's captions are small (:data:`PRETOKENIZE_BYTES`), the
captions are tokenized once, when the dataset is made, and the tokens travel with the rows
instead of the ``map(tokenize)`` step: the same values, without running (and instantiating)
the tokenizer again in every epoch's iterator.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.images import decode_image
from tfmm.data.labels import ONE_HOT, as_encoding
from tfmm.data.manifest import Manifest
from tfmm.data.tfrecords import record_dataset

logger = logging.getLogger(__name__)

# DataConfig.cache_in_memory=None caches decoded images when they take at most this much.
AUTO_CACHE_BYTES = 1 << 30
# Captions are tokenized once, up front, when their int32 token arrays take at most this much
# (``sequence_length`` x 3 arrays x 4 bytes a row: 87,000 rows at 64 tokens).
PRETOKENIZE_BYTES = 64 << 20
PRETOKENIZE_CHUNK = 4096  # rows per tokenizer call when tokenizing up front


def make_dataset(
    manifest: Manifest,
    *,
    config: DataConfig,
    preprocessor=None,
    labels: Optional[Sequence[str]] = None,
    targets=ONE_HOT,
    modalities: str = "both",
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 42,
    shuffle_buffer: int = 2048,
) -> tf.data.Dataset:
    """The ``tf.data`` input pipeline over a (validated) manifest.

    Args:
        manifest: the examples.
        config: image size (the sequence length comes with ``preprocessor``).
        preprocessor: strings -> ``{token_ids, segment_ids, padding_mask}``; needed when
            ``modalities`` includes text.
        labels: the label vocabulary; when given (and the manifest has labels), elements are
            ``(features, targets)``, else ``features`` alone.
        targets: how labels become targets: a :class:`~tfmm.data.labels.LabelEncoding`,
            its name, or a task from :mod:`tfmm.tasks` (its ``encoding``); default one-hot.
        modalities: ``both``, ``image`` or ``text``: which features to produce.
        batch_size: examples per batch (the global batch under a distribution strategy).
        shuffle: shuffle with ``seed`` (reshuffled each epoch, reproducibly).

    Returns:
        A dataset of ``({"image", "token_ids", "segment_ids", "padding_mask"}, targets)``.

    The order of a seeded shuffle does not depend on ``config.cache_in_memory`` (the same
    permutation is applied before decoding or after the cache); with
    ``config.deterministic=False`` it is no longer reproducible.
    """
    use_image = modalities in ("both", "image")
    use_text = modalities in ("both", "text")
    if use_text and preprocessor is None:
        raise ValueError(f"modalities={modalities!r} needs a text preprocessor; received None")
    frame = manifest.frame
    with_targets = labels is not None and manifest.has_labels
    in_memory = should_cache_in_memory(config, len(frame), use_image)

    ds, load = _rows_and_loader(manifest, config, labels=labels if with_targets else None,
                                encoding=as_encoding(targets), preprocessor=preprocessor if use_text else None,
                                use_image=use_image, shuffle_records=shuffle and not in_memory, seed=seed)

    def shuffled(d):
        return d.shuffle(min(shuffle_buffer, len(frame)), seed=seed, reshuffle_each_iteration=True)

    # 2. shuffle, seeded so that runs are reproducible (file names only: cheap to buffer).
    if shuffle and not in_memory:
        ds = shuffled(ds)
    # 3. read + decode + resize in one map, in parallel.
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    # 3'. or keep the decoded examples in memory after the first pass, and shuffle them.
    if in_memory:
        ds = ds.cache()
        if shuffle:
            ds = shuffled(ds)
    # 4. batch.
    ds = ds.batch(batch_size)

    # 5. tokenize whole batches (faster than per example) unless tokenized up front, then split
    # features/targets.
    def to_model_inputs(batch):
        features = {}
        if use_image:
            features["image"] = batch["image"]
        if use_text:
            features.update(batch["tokens"] if "tokens" in batch else preprocessor(batch["text"]))
        return (features, batch["targets"]) if with_targets else features

    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    # 6. prefetch so the model never waits for input.
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(pipeline_options(config))


def _rows_and_loader(manifest: Manifest, config: DataConfig, *, labels, encoding, use_image: bool,
                     shuffle_records: bool, seed: int, preprocessor=None) -> tuple:
    """Step 1 of :func:`make_dataset`: ``(dataset of rows, load)``, ``load`` reading and decoding
    one row. ``labels`` is ``None`` for a pipeline without targets; ``preprocessor`` (``None``
    without text) tokenizes a manifest's captions up front when :func:`should_tokenize_up_front`
    says so, and the tokens travel with the rows as ``"tokens"``."""
    frame = manifest.frame
    if manifest.records is not None:
        # 1'. records of a `tfmm prepare` folder (read in parallel when shuffling).
        ds, load = record_dataset(
            manifest, image_size=config.image_size, use_image=use_image,
            labels=labels, encoding=encoding,
            shuffle=shuffle_records, seed=seed,
        )
    else:
        columns = {"image": frame["image"].to_numpy(dtype=str), "text": frame["text"].to_numpy(dtype=str)}
        if labels is not None:
            columns["targets"] = encoding.encode(frame, labels)
        if preprocessor is not None and should_tokenize_up_front(config, len(frame)):
            tokens = tokenize_up_front(preprocessor, columns["text"])
            if tokens is not None:
                columns["tokens"] = tokens
        # 1. list: one element per row.
        ds = tf.data.Dataset.from_tensor_slices(columns)

        def load(example):
            out = {"text": example["text"]}
            if use_image:
                out["image"] = decode_image(tf.io.read_file(example["image"]), config.image_size,
                                            config.max_image_pixels, name=example["image"])
            if labels is not None:
                out["targets"] = example["targets"]
            if "tokens" in example:
                out["tokens"] = example["tokens"]
            return out
    return ds, load


def tokenize_up_front(preprocessor, texts) -> Optional[dict]:
    """The preprocessor's outputs for all ``texts`` (``{name: array [rows, ...]}``), computed on
    chunks of :data:`PRETOKENIZE_CHUNK` texts; ``None`` when they cannot stand for per-batch calls (an
    output that is not a dense tensor with one row per text, or whose shape past the rows
    changes from chunk to chunk, as a preprocessor padding to each batch's longest text does):
    the pipeline then tokenizes each batch as it goes."""
    # tfmm's preprocessors (tf.Modules) run their tokenizer's traced graph when called eagerly,
    # reusing it from call to call; any other callable runs as a tf.function, as in the
    # per-batch map (a KerasHub tokenizer called eagerly takes another path).
    graph = preprocessor if isinstance(preprocessor, tf.Module) else tf.function(
        preprocessor, input_signature=[tf.TensorSpec([None], tf.string)])
    chunks = []
    for start in range(0, len(texts), PRETOKENIZE_CHUNK):
        part = texts[start:start + PRETOKENIZE_CHUNK]
        out = graph(tf.constant(part))
        if not isinstance(out, dict) or not all(
                isinstance(v, tf.Tensor) and v.shape.rank and v.shape[0] == len(part) for v in out.values()):
            return None
        out = {name: value.numpy() for name, value in out.items()}
        if chunks and any(out[name].shape[1:] != chunks[0][name].shape[1:] for name in out):
            return None
        chunks.append(out)
    if not chunks:
        return None
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def pipeline_options(config: DataConfig) -> tf.data.Options:
    """The ``tf.data.Options`` of every tfmm input pipeline.

    Elements are sharded across workers (one manifest file cannot be sharded by file),
    ``config.deterministic`` sets the order guarantee and ``config.tf_data_autotune``
    whether tf.data's background autotuner runs (see :class:`~tfmm.config.DataConfig`).
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = config.deterministic
    options.autotune.enabled = config.tf_data_autotune
    return options


def should_tokenize_up_front(config: DataConfig, n_rows: int) -> bool:
    """Whether :func:`make_dataset` tokenizes a manifest's ``n_rows`` captions when it is made:
    when their int32 token arrays (``config.sequence_length`` x 3 arrays x 4 bytes a row) take at
    most :data:`PRETOKENIZE_BYTES`."""
    return n_rows * config.sequence_length * 12 <= PRETOKENIZE_BYTES


def should_cache_in_memory(config: DataConfig, n_rows: int, use_image: bool = True) -> bool:
    """Whether :func:`make_dataset` keeps decoded examples in memory (``cache()``).

    ``config.cache_in_memory`` decides when set; when ``None`` (auto), images are cached
    when ``n_rows`` decoded float32 images take at most :data:`AUTO_CACHE_BYTES`.
    """
    if config.cache_in_memory is not None:
        return bool(config.cache_in_memory)
    return use_image and n_rows * config.image_size ** 2 * 3 * 4 <= AUTO_CACHE_BYTES
