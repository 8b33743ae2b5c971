"""Tables: CSV, TSV, JSONL and Parquet manifests, and DataFrames, into a :class:`~tfmm.data.manifest.Manifest`.

:func:`manifest_from_frame` is where every reader ends: it takes the image, text and label
columns of a table, resolves each image cell against the folder it is relative to (local
or remote) and keeps the cell as written, for messages.
"""

from __future__ import annotations

import io
import os
import posixpath
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.readers.base import Manifest
from tfmm.data.validation import is_remote, read_table, resolve_path

COLUMNS_HINT = "Name the columns with --image-col/--text-col/--label-col."


def source_folder(path: str) -> str:
    """The folder holding ``path``: absolute for a local path, ``scheme://...`` for a remote one."""
    if is_remote(path):
        return posixpath.dirname(path.rstrip("/"))
    return os.path.dirname(os.path.abspath(path))


def as_folder(path: str) -> str:
    """``path`` as a folder root: absolute when local, without a trailing ``/``."""
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def manifest_from_frame(
    df: pd.DataFrame,
    *,
    source: str,
    root: str,
    base: str,
    columns: dict,
    require_labels: bool,
    problems: Sequence = (),
    hint: str = COLUMNS_HINT,
) -> Manifest:
    """The :class:`~tfmm.data.manifest.Manifest` of a table.

    Args:
        df: the table; an optional ``_row`` column numbers its records in the source.
        source: what it was read from (named in every message).
        root: the folder image paths must stay inside.
        base: the folder relative image cells are joined to.
        columns: ``{"image": ..., "text": ..., "label": ...}``: the table's column names.
        require_labels: raise when the label column is missing.
        problems: records of the source that could not be read.
        hint: how to fix a missing column (ends the error message).

    Raises:
        ValueError: a required column is missing (the message lists the columns found).
    """
    wanted = {"image": columns["image"], "text": columns["text"]}
    if require_labels or columns["label"] in df.columns:
        wanted["label"] = columns["label"]
    missing = [col for col in wanted.values() if col not in df.columns]
    if missing:
        raise ValueError(f"manifest {source}: missing column(s) {missing}; found "
                         f"{[c for c in df.columns if c != '_row']}. {hint}")
    frame = pd.DataFrame({key: df[col] for key, col in wanted.items()})
    frame = frame.fillna("").astype(str)
    rows = df["_row"].to_numpy(np.int64) if "_row" in df.columns else np.arange(len(frame))
    frame.insert(0, "row", rows)
    written = frame["image"].tolist()
    frame["image"] = [resolve_path(cell, base) for cell in written]
    return Manifest(frame.reset_index(drop=True), source, root, list(problems),
                    written=dict(zip(rows.tolist(), written)))


def columns_of(config: DataConfig) -> dict:
    return {"image": config.image_col, "text": config.text_col, "label": config.label_col}


def read_dataframe(df: pd.DataFrame, config: DataConfig, *, root: Optional[str] = None,
                   require_labels: bool = True) -> Manifest:
    """A DataFrame's manifest. Its paths are the caller's own: with no ``root``, relative
    paths resolve against the current folder and absolute paths anywhere are accepted."""
    base = as_folder(root) if root else os.getcwd()
    return manifest_from_frame(df.copy(), source="<DataFrame>", root=base if root else os.path.abspath(os.sep),
                               base=base, columns=columns_of(config), require_labels=require_labels)


def read_parquet(path: str) -> pd.DataFrame:
    """A Parquet file (any ``tf.io.gfile`` path) as a DataFrame of strings (pandas + pyarrow)."""
    try:
        import pyarrow  # noqa: F401  (pandas' Parquet engine)
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    with tf.io.gfile.GFile(path, "rb") as f:
        df = pd.read_parquet(io.BytesIO(f.read()))
    return df.astype(object).where(df.notna(), "").astype(str)


def read_table_file(path: str, config: DataConfig, fmt: str, *, root: Optional[str] = None,
                    require_labels: bool = True) -> Manifest:
    """A CSV/TSV/JSONL/Parquet manifest file (local or remote): image cells are relative to
    its folder (or to ``root``)."""
    if fmt == "parquet":
        df, problems = read_parquet(path), []
    else:
        df, problems = read_table(path, fmt)
    root = as_folder(root) if root else source_folder(path)
    return manifest_from_frame(df, source=path, root=root, base=root, columns=columns_of(config),
                               require_labels=require_labels, problems=problems)
