"""Hugging Face ``imagefolder`` datasets: a folder with ``metadata.jsonl`` (or ``.csv``, ``.parquet``).

The metadata names each image in a ``file_name`` column (relative to the metadata file's
folder) beside any other columns::

    photos/metadata.jsonl   {"file_name": "cats/0001.jpg", "text": "a grey cat", "label": "cat"}
    photos/cats/0001.jpg

The caption and label columns are named by ``text_col`` / ``label_col`` (``--text-col``,
``--label-col``). Without a label column, images that sit in class folders take the folder
name as label (``label_depth`` levels), as the ``datasets`` library does.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.readers.base import Manifest
from tfmm.data.readers.tables import as_folder, manifest_from_frame, read_parquet, source_folder
from tfmm.data.validation import is_remote, read_table

# In the order they are looked for.
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")

FILE_NAME = "file_name"


def metadata_file(folder: str):
    """The metadata file of an imagefolder ``folder``, or ``None``."""
    for name in METADATA_FILES:
        path = posixpath.join(folder, name) if is_remote(folder) else tf.io.gfile.join(folder, name)
        if tf.io.gfile.exists(path):
            return path
    return None


def read_imagefolder(source: str, config: DataConfig = DataConfig(), *, require_labels: bool = True) -> Manifest:
    """Reads an imagefolder dataset (the folder, or its metadata file) into a
    :class:`~tfmm.data.manifest.Manifest`.

    Raises:
        FileNotFoundError: the folder has none of :data:`METADATA_FILES`.
        ValueError: ``file_name`` or a required column is missing.

    Example:
        >>> m = read_imagefolder("photos", DataConfig(text_col="caption"))
    """
    if posixpath.basename(source.rstrip("/")) in METADATA_FILES:
        path, folder = source, source_folder(source)
    else:
        folder, path = as_folder(source), metadata_file(source)
        if path is None:
            raise FileNotFoundError(f"{source}: no {' / '.join(METADATA_FILES)} in the folder (an imagefolder "
                                    "dataset names its images in metadata.jsonl, column file_name)")
    if path.endswith(".parquet"):
        df, problems = read_parquet(path), []
    else:
        df, problems = read_table(path, "jsonl" if path.endswith(".jsonl") else "csv")
    label_col = config.label_col
    if label_col not in df.columns and FILE_NAME in df.columns and len(df):
        parts = df[FILE_NAME].astype(str).str.split("/")
        if bool((parts.str.len() > config.label_depth).all()):
            label_col = "_folder_label"
            df[label_col] = parts.map(lambda p: "/".join(p[-1 - config.label_depth:-1]))
    return manifest_from_frame(
        df, source=path, root=folder, base=folder, require_labels=require_labels, problems=problems,
        columns={"image": FILE_NAME, "text": config.text_col, "label": label_col},
        hint="An imagefolder metadata file names its images in file_name; name the caption and label "
             "columns with --text-col/--label-col.",
    )
