"""Crash-safe writes: every file a run keeps is written to a temporary name, then renamed.

``os.replace`` is atomic on POSIX file systems, so a process killed at any moment leaves
either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Optional

import keras
import numpy as np

from tfmm.files import atomic_save_weights, write_json_atomic

logger = logging.getLogger(__name__)


def check_free_space(model: keras.Model, folder: str, copies: int = 4) -> None:
    """Fails before training when ``folder`` cannot hold ``copies`` of the model's weights.

    Raises:
        OSError: naming the space needed and the space free.
    """
    needed = copies * sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            f"not enough free disk space in {folder}: {free / 2**20:.0f} MiB free, about "
            f"{needed / 2**20:.0f} MiB needed for checkpoints and the final model; free some space "
            "or choose another --output-dir"
        )


def best_info_path(path: str) -> str:
    """The file next to a best checkpoint that says which epoch and value it holds."""
    return path[: -len(".weights.h5")] + ".json" if path.endswith(".weights.h5") else path + ".json"


def read_best_info(path: str) -> Optional[dict]:
    """``{"epoch", "monitor", "value"}`` of the best checkpoint at ``path`` (``None``: unknown)."""
    try:
        with open(best_info_path(path), encoding="utf-8") as f:
            info = json.load(f)
        return info if isinstance(info, dict) and "value" in info else None
    except (OSError, ValueError):
        return None


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch so far, atomically.

    Next to the weights, ``<name>.json`` records the epoch and the monitored value they hold
    (a resumed run only improves on that). With ``min_interval`` > 0 the file is written at
    most once every ``min_interval`` seconds: a better epoch in between is kept in memory
    (the fitted model's weights: on cached features, only the head's) and written at the
    next write or when training ends, so a head whose epochs take milliseconds does not
    rewrite its frozen encoders' weights every epoch.

    Args:
        path: file to write (``.weights.h5``).
        monitor: the logged metric to watch (e.g. ``val_loss``).
        mode: ``min`` or ``max``; ``auto`` picks ``max`` for accuracy/F1/AUC-like names.
        should_write: ``False`` on non-chief workers (they compute but do not write).
        min_interval: seconds between two writes, at least (0: write every better epoch).
    """

    def __init__(self, path: str, monitor: str = "val_loss", mode: str = "auto", should_write: bool = True,
                 min_interval: float = 0.0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be one of ['auto', 'max', 'min']; received {mode!r}")
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "f1", "auc", "precision", "recall")) else "min"
        self.path, self.monitor, self.mode, self.should_write = path, monitor, mode, should_write
        self.min_interval = float(min_interval)
        self.best = None
        self.full_model = None  # set when fit trains a part of the model (feature cache)
        self._pending = None  # (epoch, value, the fitted model's weights) not written yet
        self._last_write = -float("inf")

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            logger.warning("AtomicBestCheckpoint: %r is not among the logged metrics %s",
                           self.monitor, sorted(logs or {}))
            return
        value = float(value)
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if not better:
            return
        self.best = value
        if not self.should_write:
            return
        if time.monotonic() - self._last_write >= self.min_interval:
            self._write(epoch, value)
        else:
            self._pending = (epoch, value, self.model.get_weights())

    def on_train_end(self, logs=None):
        if self._pending is None:
            return
        epoch, value, weights = self._pending
        current = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            self._write(epoch, value)
        finally:
            self.model.set_weights(current)

    def _write(self, epoch: int, value: float) -> None:
        atomic_save_weights(self.full_model or self.model, self.path)
        write_json_atomic(best_info_path(self.path), {"epoch": epoch + 1, "monitor": self.monitor, "value": value})
        self._pending, self._last_write = None, time.monotonic()
        logger.debug("epoch %d: %s improved to %.5f, saved %s", epoch + 1, self.monitor, value, self.path)
