"""Prepared folders: what ``tfmm prepare`` writes (:mod:`tfmm.data.tfrecords`), read as a manifest.

A prepared folder's ``manifest.json`` and ``rows.jsonl`` say everything but the pixels, so
anything that takes a manifest also takes a prepared folder, its ``manifest.json`` or a
TFRecord pattern (``gs://bucket/prepared/*.tfrecord``).
"""

from __future__ import annotations

import json
import posixpath
from typing import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.data.readers.base import Manifest


FORMAT = "tfmm.tfrecord"


FORMAT_VERSION = 1


MANIFEST_FILE = "manifest.json"


ROWS_FILE = "rows.jsonl"


_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "text": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "row": tf.io.FixedLenFeature([], tf.int64),
    "image_path": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _join(folder: str, name: str) -> str:
    # posixpath keeps "gs://bucket/x" intact; os.path.join would do the same on POSIX only.
    return posixpath.join(folder, name) if "://" in folder else tf.io.gfile.join(folder, name)


def _is_pattern(source: str) -> bool:
    return any(ch in source for ch in "*?[") or source.endswith((".tfrecord", ".tfrecords"))


def is_prepared(source: str) -> bool:
    """Whether ``source`` names prepared data: a folder with ``manifest.json``, that file,
    or a TFRecord file / glob pattern (``*.tfrecord``)."""
    source = str(source)
    if _is_pattern(source) and ".tfrecord" in source:
        return True
    if posixpath.basename(source) == MANIFEST_FILE:
        return tf.io.gfile.exists(source)
    try:
        return tf.io.gfile.isdir(source) and tf.io.gfile.exists(_join(source, MANIFEST_FILE))
    except tf.errors.OpError:
        return False


def _scan_records(files: Sequence[str]) -> pd.DataFrame:
    """Reads row, path, text and label of every record (for a bare TFRecord pattern)."""
    spec = {k: v for k, v in _FEATURES.items() if k != "image"}
    ds = tf.data.TFRecordDataset(list(files)).map(lambda s: tf.io.parse_single_example(s, spec))
    rows = [{"row": int(ex["row"]), "image": ex["image_path"].decode("utf-8"),
             "text": ex["text"].decode("utf-8"), "label": ex["label"].decode("utf-8")}
            for ex in ds.as_numpy_iterator()]
    return pd.DataFrame(rows, columns=["row", "image", "text", "label"])


def read_prepared(source: str, *, require_labels: bool = True) -> Manifest:
    """Reads a prepared folder (or its ``manifest.json``, or a TFRecord pattern).

    Returns:
        A :class:`~tfmm.data.manifest.Manifest` whose ``records`` are the TFRecord files and whose
        frame has ``row``, ``image`` (original path), ``text`` and ``label``.

    Raises:
        FileNotFoundError: no ``manifest.json`` / no file matches the pattern.
        ValueError: not a tfmm prepared folder, or labels are required and absent.
    """
    source = str(source)
    if posixpath.basename(source) == MANIFEST_FILE:
        source = source[: -len(MANIFEST_FILE)].rstrip("/") or "."
    if _is_pattern(source):
        files = sorted(tf.io.gfile.glob(source))
        if not files:
            raise FileNotFoundError(f"no TFRecord file matches {source!r}")
        frame = _scan_records(files)
        has_labels = bool((frame["label"] != "").any())
        root = posixpath.dirname(files[0])
    else:
        path = _join(source, MANIFEST_FILE)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"{source!r} has no {MANIFEST_FILE}: not a finished `tfmm prepare` folder "
                "(run `tfmm prepare --data MANIFEST --output-dir DIR` again)"
            )
        with tf.io.gfile.GFile(path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
                f"a {FORMAT!r} version <= {FORMAT_VERSION} folder; re-run `tfmm prepare`"
            )
        with tf.io.gfile.GFile(_join(source, ROWS_FILE)) as f:
            frame = pd.read_json(f, lines=True, dtype=False)
        files = [_join(source, name) for name in meta["shards"]]
        has_labels, root = bool(meta["has_labels"]), source
    if has_labels:
        frame["label"] = frame["label"].fillna("").astype(str)
    else:
        frame = frame.drop(columns=["label"], errors="ignore")
        if require_labels:
            raise ValueError(f"prepared data {source!r} has no labels; prepare a labeled manifest")
    frame["row"] = frame["row"].astype(np.int64)
    frame["text"] = frame["text"].fillna("").astype(str)
    frame["image"] = frame["image"].fillna("").astype(str)
    return Manifest(frame.reset_index(drop=True), source, root, records=files)
