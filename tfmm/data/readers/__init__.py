"""Readers: every shape of source data becomes the same :class:`~tfmm.data.manifest.Manifest`.

One reader per shape, chosen by what the source is (:func:`detect_format`) unless
``DataConfig.data_format`` names one:

===============  ==========================================================  =====================
format           source                                                      module
===============  ==========================================================  =====================
csv, tsv, jsonl  a manifest file (``.csv``; ``.tsv``/``.txt``; ``.jsonl``)   :mod:`.tables`
parquet          a ``.parquet`` manifest (pandas + pyarrow)                  :mod:`.tables`
class_folders    a folder of class folders, captions in ``<stem>.txt``       :mod:`.class_folders`
imagefolder      a folder with ``metadata.jsonl``/``.csv`` (``file_name``)   :mod:`.imagefolder`
coco             a COCO captions ``.json`` (one row per caption)             :mod:`.coco`
tfrecords        a ``tfmm prepare`` folder, its ``manifest.json`` or shards  :mod:`.prepared`
===============  ==========================================================  =====================

Each reader returns a :class:`~tfmm.data.readers.base.Manifest` (re-exported as
``tfmm.data.manifest.Manifest``). Every source may live on any ``tf.io.gfile`` filesystem (``gs://``, ``s3://`` where the
TensorFlow build has it, ``ram://``); image paths must stay inside the source's folder
unless ``allow_outside_root``.
"""

from __future__ import annotations

import os
import posixpath
from typing import Optional

import tensorflow as tf

from tfmm.config import DATA_FORMATS, DataConfig
from tfmm.data.readers.base import Manifest
from tfmm.data.readers.prepared import is_prepared, read_prepared
from tfmm.data.readers.class_folders import read_class_folders
from tfmm.data.readers.coco import is_coco, read_coco
from tfmm.data.readers.imagefolder import METADATA_FILES, metadata_file, read_imagefolder
from tfmm.data.readers.tables import read_dataframe, read_table_file
from tfmm.data.validation import TABLE_FORMATS

FOLDER_FORMATS = ("class_folders", "imagefolder")
FILE_FORMATS = ("csv", "tsv", "jsonl", "parquet", "coco")
PARQUET_EXTENSIONS = (".parquet", ".pq")

__all__ = ["DATA_FORMATS", "detect_format", "read_source", "read_dataframe"]


def _isdir(path: str) -> bool:
    try:
        return tf.io.gfile.isdir(path)
    except tf.errors.OpError:
        return False


def detect_format(source: str, config: DataConfig = DataConfig()) -> str:
    """The format ``source`` is read as: ``config.data_format`` when set, else from what it is.

    A ``tfmm prepare`` folder (or TFRecord pattern) is ``tfrecords``; another folder is
    ``imagefolder`` when it has a metadata file, else ``class_folders``; a file goes by its
    extension (``metadata.jsonl``/``.csv``/``.parquet`` are ``imagefolder``; a ``.json`` is
    ``coco`` when it is one object with ``images`` and ``annotations``, else JSON lines).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: the named format does not fit what ``source`` is (a folder format for a
            file or the reverse), or the extension is unknown.
    """
    source = str(source)
    fmt = config.data_format
    if fmt == "tfrecords" or (fmt == "auto" and is_prepared(source)):
        return "tfrecords"
    if not tf.io.gfile.exists(source):
        raise FileNotFoundError(f"manifest not found: {source}")
    folder = _isdir(source)
    if fmt != "auto":
        if folder and fmt in FILE_FORMATS:
            raise ValueError(f"--data-format {fmt} reads a file; {source} is a folder (pass --data-format "
                             f"auto, or one of {list(FOLDER_FORMATS)})")
        if not folder and fmt == "class_folders":
            raise ValueError(f"--data-format {fmt} reads a folder; {source} is a file (pass --data-format auto)")
        return fmt
    if folder:
        return "imagefolder" if metadata_file(source) else "class_folders"
    name = posixpath.basename(source).lower()
    ext = os.path.splitext(name)[1]
    if name in METADATA_FILES:
        return "imagefolder"
    if ext in PARQUET_EXTENSIONS:
        return "parquet"
    if ext == ".json" and is_coco(source):
        return "coco"
    if ext in TABLE_FORMATS:
        return TABLE_FORMATS[ext]
    raise ValueError(f"manifest {source!r}: unsupported extension {ext!r}; use .csv, .tsv, .jsonl, .parquet, "
                     f"a COCO .json or a folder, or name the format with --data-format "
                     f"({', '.join(f for f in DATA_FORMATS if f != 'auto')})")


def read_source(source, config: DataConfig = DataConfig(), *, root: Optional[str] = None,
                require_labels: bool = True) -> Manifest:
    """Reads any supported source (see the table above) into a :class:`~tfmm.data.manifest.Manifest`.

    Args:
        source: a path (local or ``tf.io.gfile``) or a ``pandas.DataFrame``.
        config: the format, column names and the class-folder options.
        root: the folder image paths are relative to, for table and COCO files (default:
            the file's folder; for a DataFrame, the current folder).
        require_labels: raise when the source has no labels.
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return read_dataframe(source, config, root=root, require_labels=require_labels)
    source = os.fspath(source)
    fmt = detect_format(source, config)
    if fmt == "tfrecords":
        return read_prepared(source, require_labels=require_labels)
    if fmt == "class_folders":
        return read_class_folders(source, config, require_labels=require_labels)
    if fmt == "imagefolder":
        return read_imagefolder(source, config, require_labels=require_labels)
    if fmt == "coco":
        return read_coco(source, config, root=root, require_labels=require_labels)
    return read_table_file(source, config, fmt, root=root, require_labels=require_labels)
