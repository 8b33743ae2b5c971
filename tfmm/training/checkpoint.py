"""Crash-safe writes: every file a run keeps is written to a temporary name, then renamed.

``os.replace`` is atomic on POSIX file systems, so a process killed at any moment leaves
either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import logging
import shutil

import keras
import numpy as np

from tfmm.files import atomic_save_weights

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


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch so far, atomically.

    Args:
        path: file to write (``.weights.h5``).
        monitor: the logged metric to watch (e.g. ``val_loss``).
        mode: ``min`` or ``max``; ``auto`` picks ``max`` for accuracy/F1/AUC-like names.
        should_write: ``False`` on non-chief workers (they compute but do not write).
    """

    def __init__(self, path: str, monitor: str = "val_loss", mode: str = "auto", should_write: bool = True):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be one of ['auto', 'max', 'min']; received {mode!r}")
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "f1", "auc", "precision", "recall")) else "min"
        self.path, self.monitor, self.mode, self.should_write = path, monitor, mode, should_write
        self.best = None
        self.full_model = None  # set when fit trains a part of the model (feature cache)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            logger.warning("AtomicBestCheckpoint: %r is not among the logged metrics %s",
                           self.monitor, sorted(logs or {}))
            return
        value = float(value)
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best = value
            if self.should_write:
                atomic_save_weights(self.full_model or self.model, self.path)
                logger.debug("epoch %d: %s improved to %.5f, saved %s", epoch + 1, self.monitor, value, self.path)
