"""``tfmm prepare``: a manifest -> sharded TFRecords, for data that does not fit in memory.

A prepared folder holds ``data-00000-of-0000N.tfrecord`` shards (one ``tf.train.Example``
per row: the image file's *encoded* bytes, the caption, the label string, the source row
and the original image path), ``rows.jsonl`` (row, image, text, label: everything but the
pixels, so labels and counts are known without reading the shards) and ``manifest.json``
(written last: a folder without it is incomplete). Every file is read and written with
``tf.io.gfile``, so the folder may live on remote storage (``gs://bucket/prepared``).

Anything that takes a manifest also takes a prepared folder (or its ``manifest.json``, or a
glob such as ``gs://bucket/prepared/*.tfrecord``): ``tfmm train --data DIR``, ``tfmm evaluate
--data DIR``. Images stay encoded on disk and are decoded by the same
:func:`tfmm.data.images.decode_image` as everywhere else.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.images import decode_image
from tfmm.data.labels import ONE_HOT, as_encoding
from tfmm.data.manifest import Manifest, check_manifest, read_manifest
from tfmm.data.readers.prepared import FORMAT, FORMAT_VERSION, MANIFEST_FILE, ROWS_FILE, _FEATURES, _join

logger = logging.getLogger(__name__)

SHARD_BYTES = 128 * 1024 * 1024  # default shard size: ~128 MiB of encoded images


def _example(image_bytes: bytes, rec) -> bytes:
    def b(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "image": b(image_bytes),
        "text": b(rec.text.encode("utf-8")),
        "label": b(getattr(rec, "label", "").encode("utf-8")),
        "row": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rec.row)])),
        "image_path": b(rec.image.encode("utf-8")),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def prepare_dataset(
    source,
    output_dir: str,
    *,
    shards: Optional[int] = None,
    config: DataConfig = DataConfig(),
    skip_bad_rows: bool = False,
    verbose: int = 1,
) -> str:
    """Converts a manifest to sharded TFRecords in ``output_dir``.

    Args:
        source: any source :func:`~tfmm.data.manifest.read_manifest` reads (local or remote), a
            DataFrame or a :class:`~tfmm.data.manifest.Manifest` (labels optional).
        output_dir: the folder to write (local, or any ``tf.io.gfile`` path such as ``gs://``).
        shards: number of TFRecord files (default: one per ~128 MiB of images, at least 1).
        config: how the source is read (format, columns) and checked (limits, outside-root rule).
        skip_bad_rows: leave out invalid rows (logged) instead of raising.
        verbose: 1 shows a progress bar.

    Returns:
        The path of the written ``manifest.json``.

    Raises:
        tfmm.data.ManifestError: bad rows and ``skip_bad_rows`` is off.
        ValueError: ``shards`` is not positive.

    Example:
        >>> prepare_dataset("data/train.csv", "data/train_tfrecords", shards=4)
        >>> tfmm.train(config, "data/train_tfrecords", ...)
    """
    if shards is not None and shards <= 0:
        raise ValueError(f"shards must be > 0; received {shards!r}")
    manifest = source if isinstance(source, Manifest) else read_manifest(
        source, config, require_labels=False
    )
    manifest = check_manifest(manifest, skip_bad_rows=skip_bad_rows, config=config)
    frame = manifest.frame
    if shards is None:
        total = sum(tf.io.gfile.stat(p).length for p in frame["image"])
        shards = max(1, math.ceil(total / SHARD_BYTES))
    shards = min(shards, len(frame))
    tf.io.gfile.makedirs(output_dir)
    names = [f"data-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    bounds = np.linspace(0, len(frame), shards + 1).astype(int)  # contiguous rows per shard
    progbar = keras.utils.Progbar(len(frame), unit_name="image") if verbose else None
    done = 0
    for name, start, stop in zip(names, bounds[:-1], bounds[1:]):
        with tf.io.TFRecordWriter(_join(output_dir, name)) as writer:
            for rec in frame.iloc[start:stop].itertuples(index=False):
                writer.write(_example(_read_bytes(rec.image), rec))
                done += 1
                if progbar is not None:
                    progbar.update(done)
    columns = ["row", "image", "text"] + (["label"] if manifest.has_labels else [])
    with tf.io.gfile.GFile(_join(output_dir, ROWS_FILE), "w") as f:
        f.write(frame[columns].to_json(orient="records", lines=True, force_ascii=False))
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "source": manifest.source,
        "num_examples": len(frame), "has_labels": manifest.has_labels, "shards": names,
    }
    path = _join(output_dir, MANIFEST_FILE)
    with tf.io.gfile.GFile(path, "w") as f:  # last: marks the folder complete
        f.write(json.dumps(meta, indent=2))
    logger.info("prepared %d rows of %s into %d shard(s) in %s", len(frame), manifest.source,
                shards, output_dir)
    return path


def record_dataset(
    manifest: Manifest,
    *,
    image_size: int,
    use_image: bool = True,
    labels: Optional[Sequence[str]] = None,
    encoding=ONE_HOT,
    shuffle: bool = False,
    seed: int = 42,
):
    """The source stage of :func:`tfmm.data.pipeline.make_dataset` for prepared data.

    Returns:
        ``(dataset, load)``: serialized records (only rows still in ``manifest.frame``, in
        its order unless ``shuffle``, which reads shards in a seeded order, in parallel) and
        the map function parsing one record into ``{"text", "image", "targets"}``.
    """
    files = list(manifest.records)
    if shuffle and len(files) > 1:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                           num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.TFRecordDataset(files, buffer_size=8 << 20)
    # Keep only the manifest's rows (check_manifest may have dropped some).
    kept = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(manifest.frame["row"].to_numpy(np.int64)),
            tf.ones(len(manifest.frame), tf.int64)),
        default_value=0,
    )
    row_spec = {"row": _FEATURES["row"]}
    ds = ds.filter(lambda s: kept.lookup(tf.io.parse_single_example(s, row_spec)["row"]) > 0)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(manifest.frame)))
    encoding = as_encoding(encoding)
    targets_of = None
    if labels is not None:
        targets_of = _targets_fn(manifest, labels, encoding)

    def load(serialized):
        example = tf.io.parse_single_example(serialized, _FEATURES)
        out = {"text": example["text"]}
        if use_image:
            out["image"] = decode_image(example["image"], image_size)
        if targets_of is not None:
            out["targets"] = targets_of(example)
        return out

    return ds, load


def _targets_fn(manifest: Manifest, labels: Sequence[str], encoding):
    """``example -> targets`` of one parsed record, as ``encoding.encode`` gives them."""
    if not encoding.uses_labels:  # pair ids depend on every row: looked up by row number
        positions = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(manifest.frame["row"].to_numpy(np.int64)),
                tf.range(len(manifest.frame), dtype=tf.int64)),
            default_value=0,
        )
        targets = tf.constant(encoding.encode(manifest.frame, labels))
        return lambda example: tf.gather(targets, positions.lookup(example["row"]))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(labels)), tf.range(len(labels), dtype=tf.int64)),
        default_value=-1,
    )
    return lambda example: encoding.encode_tensor(example["label"], table, len(labels))
