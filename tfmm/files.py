"""Crash-safe writes: every file tfmm keeps is written to a temporary name, then renamed.

``os.replace`` is atomic on POSIX file systems, so a process killed at any moment leaves
either the previous complete file (or folder) or the new complete one, never half of one.
This module imports nothing from tfmm; everything else may import it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


def _tmp_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    # Keras picks the format from the extension, so keep it (".weights.h5", ".keras").
    if path.endswith(".weights.h5"):
        return path[: -len(".weights.h5")] + ".tmp.weights.h5"
    return f"{root}.tmp{ext}"


def atomic_save_model(model: keras.Model, path: str) -> None:
    """``model.save(path)`` through a temporary file and an atomic rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
    model.save(tmp)
    os.replace(tmp, path)


def atomic_save_weights(model: keras.Model, path: str) -> None:
    """``model.save_weights(path)`` through a temporary file and an atomic rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
    model.save_weights(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: str, value) -> None:
    """Writes ``value`` as JSON through a temporary file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
