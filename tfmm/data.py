"""Manifests in, ``tf.data.Dataset`` out.

A manifest is a CSV, TSV or JSONL file (or a pandas DataFrame) with one row per
example: an image path relative to the manifest's folder, a caption and a label
(``|``-separated for multi-label). Rows are counted from 0, after the header.

The pipeline runs in a fixed order (see :func:`make_dataset`):
list -> shuffle (seeded) -> map(read + decode + resize) -> batch -> map(tokenize) -> prefetch,
or, when the decoded images fit in memory, list -> map(read + decode + resize) -> cache ->
shuffle -> batch -> map(tokenize) -> prefetch (the same seeded order). A folder written by
``tfmm prepare`` (sharded TFRecords, see :mod:`tfmm.prepare`) replaces the list of files.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.validate import (  # noqa: F401  (ManifestError, RowProblem are part of this API)
    IMAGE_FORMATS,
    ManifestError,
    RowProblem,
    duplicate_problems,
    image_problem,
    outside_root,
    read_table,
)

logger = logging.getLogger(__name__)

MULTILABEL_SEP = "|"
# DataConfig.cache_in_memory=None caches decoded images when they take at most this much.
AUTO_CACHE_BYTES = 1 << 30


@dataclasses.dataclass
class Manifest:
    """A validated-or-not table of examples.

    Attributes:
        frame: DataFrame with columns ``image`` (absolute path), ``text``, ``label``
            (``label`` is absent for unlabeled data) and ``row`` (row number in the source).
        source: the file it came from (or ``"<DataFrame>"``).
        root: the folder image paths are relative to.
        records: for a dataset prepared by ``tfmm prepare``, its TFRecord files (they hold
            the image bytes; ``image`` is then the original path, for messages only).
    """

    frame: pd.DataFrame
    source: str
    root: str
    problems: list = dataclasses.field(default_factory=list)  # records that could not be read
    records: Optional[list] = None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def has_labels(self) -> bool:
        return "label" in self.frame.columns


def read_manifest(
    source, config: DataConfig = DataConfig(), *, root: Optional[str] = None, require_labels: bool = True
) -> Manifest:
    """Reads a manifest file or DataFrame into a :class:`Manifest`.

    Args:
        source: path of a ``.csv``/``.tsv``/``.jsonl`` file, or a ``pandas.DataFrame``.
        config: names the image/text/label columns.
        root: folder image paths are relative to (default: the manifest's folder, or the
            current folder for a DataFrame).
        require_labels: raise if the label column is missing.

    Records that cannot be read (malformed CSV/JSONL lines, non-UTF-8 bytes) do not stop
    reading: they are kept in ``Manifest.problems`` and reported by :func:`check_manifest`.

    Raises:
        FileNotFoundError: the manifest file does not exist.
        ValueError: unsupported extension or a required column is missing (the message
            lists the columns found).

    Example:
        >>> m = read_manifest("data/train.csv")
        >>> m.frame.columns.tolist()
        ['row', 'image', 'text', 'label']
    """
    if not isinstance(source, pd.DataFrame):
        from tfmm import prepare  # a folder (or TFRecord pattern) written by `tfmm prepare`

        if prepare.is_prepared(str(source)):
            return prepare.read_prepared(str(source), require_labels=require_labels)

    problems = []
    if isinstance(source, pd.DataFrame):
        df, name = source.copy(), "<DataFrame>"
        base = os.path.abspath(root or os.getcwd())
        # A DataFrame's paths are the caller's own: with no root given, relative paths resolve
        # against the current folder and absolute paths anywhere are accepted.
        root = base if root else os.path.abspath(os.sep)
    else:
        name = str(source)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"manifest not found: {name}")
        df, problems = read_table(name)
        root = os.path.abspath(root or os.path.dirname(os.path.abspath(name)))
    wanted = {"image": config.image_col, "text": config.text_col}
    if require_labels or config.label_col in df.columns:
        wanted["label"] = config.label_col
    missing = [col for col in wanted.values() if col not in df.columns]
    if missing:
        raise ValueError(
            f"manifest {name}: missing column(s) {missing}; found {list(df.columns)}. "
            "Name the columns with --image-col/--text-col/--label-col."
        )
    frame = pd.DataFrame({key: df[col] for key, col in wanted.items()})
    frame = frame.fillna("").astype(str)
    frame.insert(0, "row", df["_row"].to_numpy() if "_row" in df.columns else np.arange(len(frame)))
    base = base if isinstance(source, pd.DataFrame) else root
    frame["image"] = [
        p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in frame["image"]
    ]
    return Manifest(frame.reset_index(drop=True), name, root, problems)


def split_labels(label: str, task: str) -> list:
    """The label(s) of one row: several for ``multilabel``, else one."""
    if task == "multilabel":
        return [part.strip() for part in label.split(MULTILABEL_SEP) if part.strip()]
    return [label.strip()] if label.strip() else []


def build_label_vocab(manifest: Manifest, task: str = "classification") -> list:
    """Sorted list of the distinct labels of ``manifest``."""
    labels = set()
    for value in manifest.frame["label"]:
        labels.update(split_labels(value, task))
    return sorted(labels)


def save_labels(labels: Sequence[str], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")


def load_labels(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def validate_manifest(
    manifest: Manifest,
    *,
    task: str = "classification",
    labels: Optional[Sequence[str]] = None,
    config: DataConfig = DataConfig(),
) -> list:
    """Checks every row; returns all problems found (empty list if none).

    Checks: the record could be read; the image path stays inside the manifest's folder
    (unless ``config.allow_outside_root``); the file exists, is readable, non-empty, a
    complete JPEG/PNG/GIF/BMP image within ``config.max_image_pixels``; the text is not
    empty; the label is present and, when ``labels`` (the training vocabulary) is given,
    known; the row is not an exact duplicate of an earlier one.
    """
    known = set(labels) if labels is not None else None
    problems = list(manifest.problems)
    for rec in manifest.frame.itertuples(index=False):
        reasons = []
        # Prepared (TFRecord) images were checked by `tfmm prepare`.
        if manifest.records is not None:
            pass
        elif not config.allow_outside_root and outside_root(rec.image, manifest.root):
            reasons.append(
                f"image path resolves outside the manifest folder {manifest.root} "
                "('..', an absolute path or a symlink); pass --allow-outside-root to allow it"
            )
        else:
            why = image_problem(rec.image, max_pixels=config.max_image_pixels)
            if why:
                reasons.append(why)
        if not rec.text.strip():
            reasons.append("empty text")
        if manifest.has_labels and task != "contrastive":  # contrastive: labels unused
            row_labels = split_labels(rec.label, task)
            if not row_labels:
                reasons.append("empty label")
            elif known is not None:
                unknown = [x for x in row_labels if x not in known]
                if unknown:
                    reasons.append(f"unknown label(s) {unknown}; the model knows {sorted(known)}")
        problems += [RowProblem(manifest.source, int(rec.row), rec.image, r) for r in reasons]
    problems += duplicate_problems(manifest.frame, manifest.source)
    return sorted(problems, key=lambda p: p.row)


def check_manifest(
    manifest: Manifest,
    *,
    task: str = "classification",
    labels: Optional[Sequence[str]] = None,
    skip_bad_rows: bool = False,
    skipped_path: Optional[str] = None,
    config: DataConfig = DataConfig(),
) -> Manifest:
    """Validates ``manifest``; stops with every problem, or drops the bad rows.

    Args:
        skip_bad_rows: drop bad rows (logged, and written to ``skipped_path``) instead of
            raising.
        skipped_path: CSV file receiving the skipped rows with their reasons.
        config: the limits and options of :func:`validate_manifest`.

    Raises:
        ManifestError: bad rows and ``skip_bad_rows`` is False, or no usable row is left.
    """
    problems = validate_manifest(manifest, task=task, labels=labels, config=config)
    if not problems:
        return manifest
    if not skip_bad_rows:
        raise ManifestError(problems, hint="Fix these rows, or pass --skip-bad-rows to skip them.")
    bad_rows = {p.row for p in problems}
    if skipped_path:
        with open(skipped_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(["source", "row", "image", "reason"])
            for p in problems:
                writer.writerow([p.source, p.row, p.image, p.reason])
    kept = manifest.frame[~manifest.frame["row"].isin(bad_rows)].reset_index(drop=True)
    logger.warning(
        "%s: skipped %d bad row(s) of %d%s", manifest.source, len(bad_rows),
        len(manifest) + len({p.row for p in manifest.problems}),
        f" (listed in {skipped_path})" if skipped_path else "",
    )
    if kept.empty:
        raise ManifestError(problems, hint="No usable row is left.")
    return Manifest(kept, manifest.source, manifest.root, records=manifest.records)


def encode_labels(manifest: Manifest, labels: Sequence[str], task: str) -> np.ndarray:
    """Label targets as float32: one-hot (classification), multi-hot (multilabel) or 0/1
    of shape ``[N, 1]`` (binary: ``labels[1]`` is the positive class); for ``contrastive``,
    the ``[N, 2]`` (image id, caption id) of :func:`tfmm.pairs.pair_ids`."""
    if task == "contrastive":
        from tfmm.pairs import pair_ids

        return pair_ids(manifest)
    index = {name: i for i, name in enumerate(labels)}
    rows = [split_labels(v, task) for v in manifest.frame["label"]]
    if task in ("binary", "matching"):  # matching: labels "0"/"1"
        return np.array([[float(index[r[0]])] for r in rows], dtype="float32")
    out = np.zeros((len(rows), len(labels)), dtype="float32")
    for i, row_labels in enumerate(rows):
        for name in row_labels:
            out[i, index[name]] = 1.0
    return out


def _header_uint(header, start: int, length: int, *, big_endian: bool):
    """Unsigned integer of ``length`` bytes at ``start`` of a uint8 header vector (int64)."""
    value = tf.constant(0, tf.int64)
    order = range(length) if big_endian else reversed(range(length))
    for i in order:
        value = value * 256 + header[start + i]
    return value


def image_header_size(image_bytes):
    """``(height, width)`` read from a JPEG/PNG/GIF/BMP header, without decoding pixels.

    Returns ``(-1, -1)`` for bytes of any other format (decoding then fails with TF's own
    "unknown image format" error). Works eagerly and inside ``tf.data`` / ``tf.function``.
    """
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * 32)])
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)
    magic = tf.strings.substr(padded, 0, 8)

    def png():
        return (_header_uint(header, 20, 4, big_endian=True), _header_uint(header, 16, 4, big_endian=True))

    def gif():
        return (_header_uint(header, 8, 2, big_endian=False), _header_uint(header, 6, 2, big_endian=False))

    def bmp():
        height = _header_uint(header, 22, 4, big_endian=False)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # top-down BMPs store -height
        return (height, _header_uint(header, 18, 4, big_endian=False))

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return (shape[0], shape[1])

    def unknown():
        return (tf.constant(-1, tf.int64), tf.constant(-1, tf.int64))

    return tf.case(
        [
            (tf.equal(magic, b"\x89PNG\r\n\x1a\n"), png),
            (tf.equal(tf.strings.substr(magic, 0, 4), b"GIF8"), gif),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg),
        ],
        default=unknown,
        exclusive=True,
    )


def decode_image(image_bytes, image_size: int, max_pixels: Optional[int] = None, name=None):
    """Encoded JPEG/PNG/GIF/BMP bytes -> ``[S, S, 3]`` float32 RGB in ``[0, 255]``.

    Grayscale and RGBA become RGB; a GIF gives its first frame. The serving export uses
    this same function, so training and serving see identical pixels.

    Args:
        image_bytes: scalar string tensor of encoded image bytes.
        image_size: output side ``S``.
        max_pixels: when set, the header's width x height is checked against it *before*
            the pixels are decoded, so a decompression bomb fails fast instead of allocating.
        name: optional string tensor (a path, a row or request index) named in that error.
    """
    checks = []
    if max_pixels:
        height, width = image_header_size(image_bytes)
        what = [name] if name is not None else []
        checks.append(tf.debugging.Assert(
            height * width <= max_pixels,
            [f"image header claims more pixels than the limit of {max_pixels} (max_image_pixels): "
             "refusing to decode;"] + what + ["height", height, "width", width],
        ))
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    return tf.cast(image, tf.float32)


def make_dataset(
    manifest: Manifest,
    *,
    config: DataConfig,
    preprocessor=None,
    labels: Optional[Sequence[str]] = None,
    task: str = "classification",
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
        task: selects the label encoding (see :func:`encode_labels`).
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

    if manifest.records is not None:
        # 1'. records of a `tfmm prepare` folder (read in parallel when shuffling).
        from tfmm import prepare

        ds, load = prepare.record_dataset(
            manifest, image_size=config.image_size, use_image=use_image,
            labels=labels if with_targets else None, task=task,
            shuffle=shuffle and not in_memory, seed=seed,
        )
    else:
        columns = {"image": frame["image"].to_numpy(dtype=str), "text": frame["text"].to_numpy(dtype=str)}
        if with_targets:
            columns["targets"] = encode_labels(manifest, labels, task)
        # 1. list: one element per row.
        ds = tf.data.Dataset.from_tensor_slices(columns)

        def load(example):
            out = {"text": example["text"]}
            if use_image:
                out["image"] = decode_image(tf.io.read_file(example["image"]), config.image_size,
                                            config.max_image_pixels, name=example["image"])
            if with_targets:
                out["targets"] = example["targets"]
            return out

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

    # 5. tokenize whole batches (faster than per example), then split features/targets.
    def to_model_inputs(batch):
        features = {}
        if use_image:
            features["image"] = batch["image"]
        if use_text:
            features.update(preprocessor(batch["text"]))
        return (features, batch["targets"]) if with_targets else features

    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    # 6. prefetch so the model never waits for input.
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(pipeline_options(config))


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


def should_cache_in_memory(config: DataConfig, n_rows: int, use_image: bool = True) -> bool:
    """Whether :func:`make_dataset` keeps decoded examples in memory (``cache()``).

    ``config.cache_in_memory`` decides when set; when ``None`` (auto), images are cached
    when ``n_rows`` decoded float32 images take at most :data:`AUTO_CACHE_BYTES`.
    """
    if config.cache_in_memory is not None:
        return bool(config.cache_in_memory)
    return use_image and n_rows * config.image_size ** 2 * 3 * 4 <= AUTO_CACHE_BYTES
