"""Crash-safe writes: every file tfmm keeps is written to a temporary name, then renamed.

``os.replace`` is atomic on POSIX file systems, so a process killed at any moment leaves
either the previous complete file (or folder) or the new complete one, never half of one.
This module imports nothing from tfmm; everything else may import it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    import keras


@contextlib.contextmanager
def atomic_write(path: str, *, newline: Optional[str] = None) -> Iterator:
    """Opens a temporary text file next to ``path``; on success, flushes it to disk and renames it
    to ``path``. On an error the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_write("runs/a/config.yaml") as f:
        ...     f.write("model: {}\n")
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, value) -> None:
    """Writes ``value`` as JSON through a temporary file and a rename."""
    with atomic_write(path) as f:
        json.dump(value, f, indent=2)


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` through a temporary file and a rename."""
    with atomic_write(path) as f:
        f.write(text)


def _tmp_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    # Keras picks the format from the extension, so keep it (".weights.h5", ".keras").
    if path.endswith(".weights.h5"):
        return path[: -len(".weights.h5")] + ".tmp.weights.h5"
    return f"{root}.tmp{ext}"


def _atomic_keras_save(save, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
    save(tmp)
    os.replace(tmp, path)


def atomic_save_model(model: keras.Model, path: str) -> None:
    """``model.save(path)`` through a temporary file and an atomic rename."""
    _atomic_keras_save(model.save, path)


def atomic_save_weights(model: keras.Model, path: str) -> None:
    """``model.save_weights(path)`` through a temporary file and an atomic rename."""
    _atomic_keras_save(model.save_weights, path)


def publish_dir(staged: str, final: str) -> None:
    """Renames a completely written folder ``staged`` to ``final`` (atomic on one file system);
    ``final`` must not exist (or be an empty folder)."""
    os.replace(staged, final)
