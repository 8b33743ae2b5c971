"""Crash-safe resume: the run-state marker, per-worker backups and the epoch log.

A run directory's ``train_state.json`` says whether its training is ``running`` or
``finished``. ``tfmm train`` with the same ``--output-dir``:

- after a kill (state ``running``): resumes from this worker's backup
  (``RUN/backup/<worker>/``, written by :class:`TrainingBackup` at every epoch end and
  every ``save_every`` steps) at the start of the interrupted epoch; the epoch log
  (``history.csv``) is cut back to the epochs the backup holds, so every epoch appears once;
- after a finished run: refuses (:class:`RunFinishedError`) unless ``overwrite``, which
  deletes the previous run's files and trains from scratch.

Under multi-worker training every worker checks its own backup and the workers agree
(:func:`tfmm.training.distribute.allgather`) before any of them trains.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
from typing import Optional

import keras

from tfmm.config import RunConfig, load_config
from tfmm.files import atomic_write, write_json_atomic
from tfmm.run_dir import (
    ABLATION_FILE, BEST_CHECKPOINT, CALIBRATION_FILE, CONFIG_FILE, CONFUSION_MATRIX_FILE, DATA_SOURCES_FILE, HISTORY_CSV,
    HISTORY_FILE, LABELS_FILE, LOGS_DIR, METRICS_FILE, MODEL_FILE, PER_CLASS_FILE, PR_CURVE_FILE,
    RELIABILITY_FILE, ROC_CURVE_FILE, SKIPPED_FILE, STATE_FILE, THRESHOLDS_FILE, TOKENIZER_DIR, TRAINING_CURVES_FILE,
)
from tfmm.training import distribute
from tfmm.training.checkpoint import read_best_info

logger = logging.getLogger(__name__)

# What --overwrite removes: the files `train` writes (and `evaluate`'s default report, which
# described the old model).
RUN_OUTPUTS = (
    CONFIG_FILE, LABELS_FILE, TOKENIZER_DIR, "checkpoints", LOGS_DIR, HISTORY_FILE, HISTORY_CSV,
    MODEL_FILE, SKIPPED_FILE, TRAINING_CURVES_FILE, THRESHOLDS_FILE, STATE_FILE, DATA_SOURCES_FILE,
    distribute.BACKUP_DIR,
    METRICS_FILE, PER_CLASS_FILE, CONFUSION_MATRIX_FILE, ROC_CURVE_FILE, PR_CURVE_FILE, ABLATION_FILE,
    CALIBRATION_FILE, RELIABILITY_FILE,
)
# Options that may change between an interrupted attempt and its resumption.
RESUMABLE_CHANGES = ("strategy", "devices", "save_every")
MONITORS = ("val_loss", "loss")  # what the best checkpoint may monitor


class RunFinishedError(ValueError):
    """The run directory already holds a finished run (pass a new one or ``overwrite``)."""


@dataclasses.dataclass
class RunStart:
    """Where a training attempt starts: epoch, earlier epochs' logs, this worker's folders."""

    run_dir: str
    backup_dir: str
    chief: bool
    initial_epoch: int = 0
    prior_history: dict = dataclasses.field(default_factory=dict)
    attempt: int = 1
    best: dict = dataclasses.field(default_factory=dict)  # {"val_loss"/"loss": best so far}

    @property
    def resumed(self) -> bool:
        return self.initial_epoch > 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_state(run_dir: str) -> Optional[dict]:
    """The run's ``train_state.json`` (``None`` when there is none or it is unreadable)."""
    path = os.path.join(run_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", path, e)
        return None
    return state if isinstance(state, dict) else None


def write_state(run_dir: str, **fields) -> dict:
    """Updates ``train_state.json`` with ``fields`` (atomically: temp file + rename)."""
    state = {**(read_state(run_dir) or {}), **fields, "updated_at": _now()}
    write_json_atomic(os.path.join(run_dir, STATE_FILE), state)
    return state


def backup_epoch(folder: str) -> Optional[int]:
    """The epoch a (repaired) backup folder resumes at (``None``: no backup)."""
    if not os.path.exists(os.path.join(folder, "latest.weights.h5")):
        return None
    return _metadata_epoch(os.path.join(folder, "training_metadata.json"))


def _metadata_epoch(path: str) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def repair_backup(folder: str) -> None:
    """Makes a backup folder loadable after a kill in the middle of writing it.

    ``BackupAndRestore`` writes the weights, then the metadata, non-atomically. When either
    is unreadable the previous pair (``*.bkp``) replaces it; when that is unreadable too,
    the folder is removed (training starts from scratch).
    """
    weights, meta = os.path.join(folder, "latest.weights.h5"), os.path.join(folder, "training_metadata.json")
    if not os.path.isdir(folder):
        return
    if os.path.exists(weights) and _h5_readable(weights) and _metadata_epoch(meta) is not None:
        return
    if os.path.exists(weights + ".bkp") and _h5_readable(weights + ".bkp") and _metadata_epoch(meta + ".bkp") is not None:
        logger.warning("backup in %s was cut off while being written: using the previous one", folder)
        shutil.copyfile(weights + ".bkp", weights)
        shutil.copyfile(meta + ".bkp", meta)
        return
    logger.warning("backup in %s is unreadable: removing it", folder)
    shutil.rmtree(folder, ignore_errors=True)


def config_differences(old: dict, new: dict, ignore=RESUMABLE_CHANGES) -> list:
    """``["train.epochs: 3 -> 5", ...]`` between two ``RunConfig.to_dict()`` dicts."""
    diffs = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if key in ignore or key == "num_classes":
                continue
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def clear_run(run_dir: str, own_backup: str, chief: bool) -> None:
    """Deletes a previous run's outputs (chief) and this worker's backup (everyone)."""
    shutil.rmtree(own_backup, ignore_errors=True)
    if not chief:
        return
    for name in RUN_OUTPUTS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and name != distribute.BACKUP_DIR:
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)
    logger.info("--overwrite: removed the previous run's files from %s", run_dir)


def read_history_csv(path: str) -> dict:
    """``history.csv`` (``CSVLogger``) as ``{metric: [value per epoch]}``, ordered by epoch."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["epoch"]))
    history = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                history.setdefault(key, []).append(float(value) if value not in ("", None) else float("nan"))
    return history


def _history_rows(path: str, epochs: int) -> tuple:
    """``(fieldnames, {epoch: row})`` for the first ``epochs`` epochs of ``history.csv``."""
    if not os.path.exists(path):
        return [], {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = {}
        for row in reader:
            try:
                epoch = int(row["epoch"])
            except (KeyError, TypeError, ValueError):
                continue  # a half-written last line
            if epoch < epochs and None not in row.values():
                rows[epoch] = row  # a repeated epoch: the last one logged counts
        return reader.fieldnames or [], rows


def trim_history_csv(path: str, epochs: int) -> dict:
    """Keeps the rows of the first ``epochs`` epochs (once each); returns them as a history.

    The rows of an epoch that was interrupted, or logged after the last backup, are
    dropped: that epoch runs again and logs itself again.
    """
    if not os.path.exists(path):
        return {}
    fields, rows = _history_rows(path, epochs)
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[e] for e in sorted(rows))
    return read_history_csv(path)


def _best_so_far(run_dir: str, epochs: int) -> list:
    """``[best val_loss, best loss]``: the value the best checkpoint records holding, else the
    best of the first ``epochs`` logged epochs (NaN: none, or no readable best checkpoint to beat)."""
    best = os.path.join(run_dir, BEST_CHECKPOINT)
    if not (os.path.exists(best) and _h5_readable(best)):
        return [math.nan, math.nan]
    _, rows = _history_rows(os.path.join(run_dir, HISTORY_CSV), epochs)
    info = read_best_info(best)  # what the file holds (it may lag the log: see AtomicBestCheckpoint)
    out = []
    for key in MONITORS:
        if info is not None and info.get("monitor") == key:
            out.append(float(info["value"]))
            continue
        values = [float(r[key]) for r in rows.values() if r.get(key) not in (None, "")]
        values = [v for v in values if not math.isnan(v)]
        out.append(min(values) if values else math.nan)
    return out


def _h5_readable(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def prepare_run(
    run_dir: str, config: RunConfig, strategy, *, overwrite: bool = False
) -> RunStart:
    """Decides, on every worker alike, whether training starts fresh or resumes.

    Args:
        run_dir: the run directory (absolute).
        config: the run config about to be trained (``num_classes`` may still be 0).
        strategy: the ``tf.distribute`` strategy (workers agree through it).
        overwrite: discard a previous run in ``run_dir`` (finished or not).

    Returns:
        A :class:`RunStart`: the epoch to start at and the earlier epochs' history.

    Raises:
        RunFinishedError: ``run_dir`` holds a finished run and ``overwrite`` is off.
        ValueError: an unfinished run with a different config, or workers whose backups
            disagree.
    """
    chief = distribute.is_chief(strategy)
    backup = distribute.backup_dir(run_dir, strategy)
    state, diffs, row = _local_view(run_dir, backup, config, chief, overwrite=overwrite)
    # Every worker decides alike: the chief's state and best values, every worker's backup.
    rows = distribute.allgather(strategy, row)
    initial_epoch, agreed_best = _agreed_start(run_dir, rows, state, diffs)
    start = RunStart(run_dir, backup, chief, initial_epoch=initial_epoch,
                     attempt=int((state or {}).get("attempt", 0)) + 1, best=agreed_best)
    if chief:
        _mark_running(start, state, config)
    if initial_epoch:
        logger.info("resuming %s at epoch %d of %d from %s", run_dir, initial_epoch + 1,
                    config.train.epochs, backup)
    return start


def _local_view(run_dir: str, backup: str, config: RunConfig, chief: bool, *, overwrite: bool) -> tuple:
    """What this worker sees: ``(state, config differences, row)``, ``row`` being
    ``[finished, config differs, backup epoch (-1: none), *best value per monitor]``."""
    state = read_state(run_dir) if chief else None
    if overwrite:
        clear_run(run_dir, backup, chief)
        state = None
    finished = bool(state and state.get("status") == "finished")
    diffs = []
    saved_config = os.path.join(run_dir, CONFIG_FILE)
    if state and not finished and os.path.exists(saved_config):
        diffs = config_differences(load_config(saved_config).to_dict(), config.to_dict())
    repair_backup(backup)
    epoch = backup_epoch(backup)
    epoch = -1 if epoch is None else epoch
    best = _best_so_far(run_dir, epoch) if chief and epoch > 0 else [math.nan] * len(MONITORS)
    return state, diffs, [int(finished), int(bool(diffs)), epoch, *best]


def _agreed_start(run_dir: str, rows: list, state: Optional[dict], diffs: list) -> tuple:
    """``(initial_epoch, best values)`` that every worker's row agrees on; raises otherwise."""
    if any(r[0] for r in rows):
        done = state or {}
        raise RunFinishedError(
            f"{run_dir} already holds a finished run ({done.get('epochs_completed', '?')} of "
            f"{done.get('epochs_requested', '?')} epochs, finished {done.get('finished_at', '?')}); "
            "pass a new --output-dir, or --overwrite (overwrite=True) to train again from scratch"
        )
    if any(r[1] for r in rows):
        raise ValueError(
            f"{run_dir} holds an unfinished run with a different config "
            f"({'; '.join(diffs) or 'see the chief'}); pass the same options to resume it, "
            "or --overwrite (overwrite=True) to start again"
        )
    epochs = {int(r[2]) for r in rows}
    if len(epochs) > 1:
        raise ValueError(
            f"the workers' backups under {os.path.join(run_dir, distribute.BACKUP_DIR)} hold different "
            f"epochs ({sorted(epochs)}; -1: none); resume every worker from the same backups, or pass "
            "--overwrite to start again"
        )
    initial_epoch = max(0, epochs.pop())
    agreed_best = {}
    for i, key in enumerate(MONITORS):
        values = [r[3 + i] for r in rows if not math.isnan(r[3 + i])]
        if values and initial_epoch:
            agreed_best[key] = min(values)
    return initial_epoch, agreed_best


def _mark_running(start: RunStart, state: Optional[dict], config: RunConfig) -> None:
    """The chief's bookkeeping of a start: trimmed history, a readable best checkpoint, the state file."""
    run_dir, initial_epoch = start.run_dir, start.initial_epoch
    start.prior_history = trim_history_csv(os.path.join(run_dir, HISTORY_CSV), initial_epoch)
    best = os.path.join(run_dir, BEST_CHECKPOINT)
    if os.path.exists(best) and not _h5_readable(best):
        logger.warning("removing unreadable %s (it is written again at the next best epoch)", best)
        os.remove(best)
    if state and state.get("status") == "running" and not initial_epoch:
        logger.info("the previous attempt stopped before its first backup: starting from epoch 1")
    write_state(
        run_dir, status="running", attempt=start.attempt, epochs_requested=config.train.epochs,
        resumed_from_epoch=initial_epoch, started_at=_now(),
        **({} if state else {"created_at": _now()}),
    )


def finish_run(start: RunStart, *, epochs_completed: int, stopped_early: bool = False) -> None:
    """Marks the run finished (chief) and deletes this worker's backup (everyone)."""
    if start.chief:
        write_state(start.run_dir, status="finished", epochs_completed=epochs_completed,
                    stopped_early=stopped_early, finished_at=_now())
    shutil.rmtree(start.backup_dir, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(start.backup_dir))
    except OSError:
        pass  # another worker's backup is still there, or it is already gone


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` for crash-safe runs.

    Differences from the Keras callback: keeps two backups (a kill while writing one
    leaves the other), keeps them when ``fit`` returns (the run deletes them once its
    final model is saved, see :func:`finish_run`), and with ``save_freq=N`` also saves at
    every epoch end, so a restart never repeats more than the interrupted epoch.

    Args:
        backup_dir: this worker's own folder.
        save_freq: ``"epoch"`` or a number of steps.

    Example:
        >>> model.fit(ds, epochs=5, callbacks=[TrainingBackup("runs/a/backup/worker-0", 100)])
    """

    def __init__(self, backup_dir: str, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True, delete_checkpoint=False)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()
            self._batches_seen_since_last_saving = 0
