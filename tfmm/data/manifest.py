"""Manifests: the one table every source becomes (:class:`Manifest`); labels; row checks.

A manifest is a CSV, TSV, JSONL or Parquet file (or a pandas DataFrame) with one row per
example: an image path relative to the manifest's folder, a caption and a label
(``|``-separated for multi-label). Rows are counted from 0, after the header.
:func:`read_manifest` also reads the other shapes data comes in (class folders with caption
files, Hugging Face imagefolder datasets, COCO captions; see :mod:`tfmm.data.readers`), from
local disk or any ``tf.io.gfile`` filesystem (``gs://``, ``s3://``, ``ram://``), and
:func:`write_manifest` writes any of them back as a CSV.

A folder written by ``tfmm prepare`` (sharded TFRecords, see :mod:`tfmm.data.tfrecords`) is
read here too (:func:`read_prepared`): its ``manifest.json`` and ``rows.jsonl`` say everything
but the pixels, so anything that takes a manifest also takes a prepared folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import posixpath
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.labels import ONE_HOT, as_encoding
from tfmm.data.validation import (
    ManifestError, RowProblem, duplicate_problems, image_problem, is_remote, normalize_path, outside_root,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Manifest:
    """A validated-or-not table of examples.

    Attributes:
        frame: DataFrame with columns ``image`` (absolute path), ``text``, ``label``
            (``label`` is absent for unlabeled data) and ``row`` (row number in the source).
        source: the file it came from (or ``"<DataFrame>"``).
        root: the folder image paths are relative to.
        problems: records of the source that could not be read (malformed lines, images
            without a caption file, ...), reported by :func:`validate_manifest`.
        records: for a dataset prepared by ``tfmm prepare``, its TFRecord files (they hold
            the image bytes; ``image`` is then the original path, for messages only).
        written: ``{row: image path as the source wrote it}`` (before it was resolved), for
            messages.
    """

    frame: pd.DataFrame
    source: str
    root: str
    problems: list = dataclasses.field(default_factory=list)
    records: Optional[list] = None
    written: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def has_labels(self) -> bool:
        return "label" in self.frame.columns


def read_manifest(
    source, config: DataConfig = DataConfig(), *, root: Optional[str] = None, require_labels: bool = True
) -> Manifest:
    """Reads any supported data source into a :class:`Manifest`.

    Args:
        source: a ``.csv``/``.tsv``/``.jsonl``/``.parquet`` manifest, a folder of class folders,
            an imagefolder dataset, a COCO captions ``.json``, a ``tfmm prepare`` folder (each
            local or on a ``tf.io.gfile`` filesystem), or a ``pandas.DataFrame``; the reader
            is chosen as :func:`tfmm.data.readers.detect_format` says.
        config: names the image/text/label columns, the format and class-folder options.
        root: folder image paths are relative to (default: the manifest's folder, or the
            current folder for a DataFrame).
        require_labels: raise if the label column is missing.

    Records that cannot be read (malformed CSV/JSONL lines, non-UTF-8 bytes, images without
    a caption file) do not stop reading: they are kept in ``Manifest.problems`` and
    reported by :func:`check_manifest`.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: unsupported extension, a format that does not fit the source, or a
            required column is missing (the message lists the columns found).

    Example:
        >>> m = read_manifest("data/train.csv")
        >>> m.frame.columns.tolist()
        ['row', 'image', 'text', 'label']
        >>> read_manifest("gs://bucket/pets", DataConfig(label_depth=1)).frame["label"].unique()
    """
    # The readers build Manifests (this module), so they are imported when called.
    from tfmm.data.readers import read_source

    return read_source(source, config, root=root, require_labels=require_labels)


def write_manifest(manifest: Manifest, path: str) -> str:
    """Writes ``manifest`` as a CSV (``row`` left out) that reads back to the same rows.

    Image paths inside the CSV's folder are written relative to it; others (another folder,
    another filesystem) are written as they resolve, absolute, and a warning says that
    reading the file back needs ``--allow-outside-root``. ``path`` may be remote.

    Returns:
        ``path``.

    Example:
        >>> write_manifest(read_manifest("pets"), "pets.csv")  # pets/cats/0001.jpg, ...
    """
    folder = posixpath.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(path))
    frame = manifest.frame.drop(columns=["row"]).copy()
    relative = [not outside_root(p, folder) for p in frame["image"]]
    if is_remote(folder):
        cut = len(normalize_path(folder).rstrip("/")) + 1
        cells = [normalize_path(p)[cut:] if inside else p for p, inside in zip(frame["image"], relative)]
    else:
        cells = [os.path.relpath(p, folder) if inside else p for p, inside in zip(frame["image"], relative)]
    frame["image"] = [c.replace(os.sep, "/") for c in cells]
    if not all(relative):
        logger.warning("%s: %d image path(s) are outside its folder %s and are written absolute; reading it "
                       "back needs --allow-outside-root (or write the manifest in a folder above the images)",
                       path, relative.count(False), folder)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(frame.to_csv(index=False, lineterminator="\n"))
    return path


def build_label_vocab(manifest: Manifest, encoding=ONE_HOT) -> list:
    """Sorted list of the distinct labels of ``manifest`` (``encoding``: a
    :class:`~tfmm.data.labels.LabelEncoding`, its name or a task; ``multi_hot`` splits on ``|``)."""
    return as_encoding(encoding).vocabulary(manifest.frame)


def save_labels(labels: Sequence[str], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")


def load_labels(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def validate_manifest(
    manifest: Manifest,
    *,
    encoding=ONE_HOT,
    labels: Optional[Sequence[str]] = None,
    config: DataConfig = DataConfig(),
) -> list:
    """Checks every row; returns all problems found (empty list if none).

    Checks: the record could be read; the image path stays inside the manifest's folder
    (unless ``config.allow_outside_root``); the file exists, is readable, non-empty, a
    complete JPEG/PNG/GIF/BMP image within ``config.max_image_pixels``; the text is not
    empty; the label is present and, when ``labels`` (the training vocabulary) is given,
    known (labels are split and checked as ``encoding`` reads them; an encoding that does
    not use labels skips this); the row is not an exact duplicate of an earlier one.
    """
    encoding = as_encoding(encoding)
    known = set(labels) if labels is not None else None
    problems = list(manifest.problems)
    for rec in manifest.frame.itertuples(index=False):
        reasons = []
        # Prepared (TFRecord) images were checked by `tfmm prepare`.
        if manifest.records is not None:
            pass
        elif not config.allow_outside_root and outside_root(rec.image, manifest.root):
            cell = manifest.written.get(int(rec.row), rec.image)
            where = f"image path {cell!r} resolves to {rec.image}" if cell != rec.image else "image path"
            reasons.append(
                f"{where} outside the manifest folder {manifest.root} "
                "('..', an absolute path, another filesystem or a symlink); pass --allow-outside-root to allow it"
            )
        else:
            why = image_problem(rec.image, max_pixels=config.max_image_pixels)
            if why:
                reasons.append(why)
        if not rec.text.strip():
            reasons.append("empty text")
        if manifest.has_labels and encoding.uses_labels:
            row_labels = encoding.split(rec.label)
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
    encoding=ONE_HOT,
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
    problems = validate_manifest(manifest, encoding=encoding, labels=labels, config=config)
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
    return Manifest(kept, manifest.source, manifest.root, records=manifest.records, written=manifest.written)


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
