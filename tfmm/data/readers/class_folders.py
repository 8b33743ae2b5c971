"""Class folders: ``ROOT/<label>/<image>``, each image's caption in a sidecar ``<stem>.txt``.

The ``ImageFolder`` layout of the classic tutorials, with the caption files of captioned
image sets and fine-tuning datasets beside the images::

    pets/cats/0001.jpg   pets/cats/0001.txt   ("a grey cat on a sofa")
    pets/dogs/0002.png   pets/dogs/0002.txt

The label is the folder above each image (``label_depth`` levels, ``/``-joined:
``animals/cats``); the text is the sidecar's non-empty lines joined by spaces
(``text_from="sidecar"``), or the image's file name (``"filename"``: ``grey_cat.jpg`` ->
``grey cat``). Rows are the images in sorted path order; an image without its caption file,
or not deep enough for its label, is reported like any bad row.
"""

from __future__ import annotations

import posixpath

import pandas as pd
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.readers.base import Manifest
from tfmm.data.readers.tables import as_folder
from tfmm.data.validation import RowProblem, is_remote

# Files read as images (others, captions included, are skipped); formats tfmm cannot decode
# (WebP, TIFF) are listed so that validation names them instead of ignoring them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if is_remote(folder) else tf.io.gfile.join(folder, name)


def list_images(folder: str) -> list:
    """Relative paths (``/``-separated, sorted) of every image file under ``folder``, hidden
    files and folders left out."""
    found = []
    root = as_folder(folder)
    for dirpath, dirnames, filenames in tf.io.gfile.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = dirpath[len(root):].strip("/")
        found += [posixpath.join(rel, name) if rel else name for name in filenames
                  if not name.startswith(".") and posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _caption(path: str) -> str:
    """A sidecar's non-empty lines, stripped and joined by spaces."""
    with tf.io.gfile.GFile(path, "rb") as f:
        lines = [line.strip() for line in f.read().decode("utf-8-sig").splitlines()]
    return " ".join(line for line in lines if line)


def read_class_folders(folder: str, config: DataConfig = DataConfig(), *, require_labels: bool = True) -> Manifest:
    """Reads a folder of class folders into a :class:`~tfmm.data.manifest.Manifest`.

    Args:
        folder: the root folder (local or any ``tf.io.gfile`` path).
        config: ``label_depth`` and ``text_from``.
        require_labels: unused (class folders always give labels); kept for a common signature.

    Returns:
        A manifest with one row per image (``row`` numbers every image found, sorted), whose
        ``problems`` name each image without a caption file or without a class folder.

    Raises:
        ValueError: the folder holds no image file.

    Example:
        >>> m = read_class_folders("pets", DataConfig(text_from="sidecar"))
        >>> m.frame[["text", "label"]].iloc[0].tolist()
        ['a grey cat on a sofa', 'cats']
    """
    root = as_folder(folder)
    images = list_images(root)
    if not images:
        raise ValueError(f"{folder}: no image file ({', '.join(IMAGE_EXTENSIONS)}) in the folder or its "
                         "subfolders; expected class folders such as "
                         f"{posixpath.join(folder, 'cats', '0001.jpg')}")
    shown = folder.rstrip("/")
    rows, problems = [], []
    for row, rel in enumerate(images):
        parts = rel.split("/")
        entry = f"{shown}/{rel}"
        if len(parts) - 1 < config.label_depth:
            problems.append(RowProblem(
                shown, row, entry, f"not inside a class folder: --label-depth {config.label_depth} needs "
                f"{'/'.join(['LABEL'] * config.label_depth)}/{parts[-1]}"))
            continue
        stem = posixpath.splitext(parts[-1])[0]
        if config.text_from == "filename":
            text = stem.replace("_", " ").replace("-", " ").strip()
        else:
            sidecar = _join(root, posixpath.join(*parts[:-1], stem + ".txt"))
            if not tf.io.gfile.exists(sidecar):
                problems.append(RowProblem(shown, row, entry, f"no caption file {stem}.txt (or pass "
                                                              "--text-from filename)"))
                continue
            try:
                text = _caption(sidecar)
            except UnicodeDecodeError as e:
                problems.append(RowProblem(shown, row, entry, f"caption file {stem}.txt is not valid UTF-8 "
                                                              f"({e.reason} at byte {e.start})"))
                continue
        rows.append({"row": row, "image": _join(root, rel), "text": text,
                     "label": "/".join(parts[-1 - config.label_depth:-1])})
    frame = pd.DataFrame(rows, columns=["row", "image", "text", "label"])
    frame["row"] = frame["row"].astype("int64")
    written = {r["row"]: f"{shown}/{images[r['row']]}" for r in rows}
    return Manifest(frame, shown, root, problems, written=written)
