"""Manifests: the one table every source becomes (:class:`Manifest`); labels; row checks.

A manifest is a CSV, TSV, JSONL or Parquet file (or a pandas DataFrame) with one row per
example: an image path relative to the manifest's folder, a caption and a label
(``|``-separated for multi-label). Rows are counted from 0, after the header.
:func:`read_manifest` also reads the other shapes data comes in (class folders with caption
files, Hugging Face imagefolder datasets, COCO captions; see :mod:`tfmm.data.readers`), from
local disk or any ``tf.io.gfile`` filesystem (``gs://``, ``s3://``, ``ram://``), and
:func:`write_manifest` writes any of them back as a CSV.

A folder written by ``tfmm prepare`` (sharded TFRecords, see :mod:`tfmm.data.tfrecords`) is
read too (:func:`~tfmm.data.readers.prepared.read_prepared`): anything that takes a manifest
also takes a prepared folder.
"""

from __future__ import annotations

import csv
import logging
import os
import posixpath
from typing import Optional, Sequence

import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.labels import ONE_HOT, as_encoding
from tfmm.data.readers import read_source
from tfmm.data.readers.base import Manifest
from tfmm.data.readers.prepared import (  # noqa: F401  (re-exported: prepared folders are manifests too)
    FORMAT, FORMAT_VERSION, MANIFEST_FILE, ROWS_FILE, _FEATURES, _join, is_prepared, read_prepared,
)
from tfmm.data.validation import (  # noqa: F401  (ManifestError, RowProblem: re-exported)
    ManifestError, RowProblem, duplicate_problems, image_problem, is_remote, normalize_path, outside_root,
)

logger = logging.getLogger(__name__)


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
