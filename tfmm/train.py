"""Training: strategy scope, optimizer schedule, callbacks, ``model.fit``, run directory.

A run directory holds ``config.yaml`` (enough to rebuild everything), ``labels.txt``,
``tokenizer/`` (the text preprocessor's vocabulary), ``checkpoints/``, ``logs/``
(TensorBoard, see :mod:`tfmm.callbacks`), ``history.json``, ``training_curves.png`` and
the final ``model.keras``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Optional

import keras
import tensorflow as tf

from tfmm import data as tfdata
from tfmm import heads, pairs, plots, tasks, text
from tfmm.callbacks import reporting_callbacks
from tfmm.checkpoint import AtomicBestCheckpoint, atomic_save_model, check_free_space
from tfmm.config import RunConfig, save_config
from tfmm.model import build_model
from tfmm.validate import count_truncated

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.keras"
TOKENIZER_DIR = "tokenizer"
SKIPPED_FILE = "skipped_rows.csv"
TRAINING_CURVES_FILE = "training_curves.png"


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its history and where it was saved."""

    model: keras.Model
    history: dict
    run_dir: str
    config: RunConfig
    labels: list


def select_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the ``tf.distribute`` strategy for ``--strategy``.

    ``auto`` picks MirroredStrategy when more than one GPU is visible, else the default
    (single-device) strategy.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name in ("auto", "one_device"):
        return tf.distribute.get_strategy()
    raise ValueError(f"strategy must be one of ['auto', 'mirrored', 'multi_worker', 'one_device']; received {name!r}")


def make_optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with linear warmup then cosine decay over the whole run."""
    tc = config.train
    total = max(1, steps_per_epoch * tc.epochs)
    warmup = int(total * tc.warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else tc.learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=tc.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=tc.weight_decay)


def compile_model(model: keras.Model, config: RunConfig, steps_per_epoch: int) -> None:
    """Compiles ``model`` with the task's loss and metrics (call inside the strategy scope)."""
    mc = config.model
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=heads.loss_for(mc.task),
        metrics=heads.metrics_for(mc.task, mc.num_classes),
    )


def _as_manifest(source, config: RunConfig) -> tfdata.Manifest:
    if isinstance(source, tfdata.Manifest):
        return source
    return tfdata.read_manifest(source, config.data, require_labels=pairs.labels_required(config))


def _check_writable(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, ".tfmm_write_test")
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"output dir {path!r} is not writable: {e}") from e


def default_callbacks(run_dir: str, config: RunConfig, has_val: bool) -> list:
    """TensorBoard, best checkpoint, early stopping and a CSV log, all under ``run_dir``."""
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "logs")),
        AtomicBestCheckpoint(os.path.join(run_dir, "checkpoints", "best.weights.h5"), monitor=monitor),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv")),
    ]
    if config.train.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=config.train.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    return callbacks


def train(
    config: RunConfig,
    train_data,
    val_data=None,
    output_dir: str = "runs/latest",
    *,
    callbacks: Optional[list] = None,
    verbose="auto",
) -> TrainResult:
    """Trains a fused model on a manifest and writes a run directory.

    Args:
        config: the run configuration.
        train_data: training manifest (path, DataFrame or :class:`~tfmm.data.Manifest`).
        val_data: optional validation manifest (same forms).
        output_dir: the run directory (created).
        callbacks: extra Keras callbacks, added to the defaults.
        verbose: passed to ``model.fit`` (``"auto"`` shows a progress bar).

    Returns:
        A :class:`TrainResult`.

    Raises:
        tfmm.data.ManifestError: bad rows (all listed) and ``skip_bad_rows`` is off.
        OSError: ``output_dir`` is not writable.

    Example:
        >>> result = tfmm.train(tfmm.RunConfig(), "data/train.csv", "data/val.csv", "runs/a")
        >>> result.history["val_accuracy"][-1]
    """
    run_dir = os.path.abspath(output_dir)
    _check_writable(run_dir)
    keras.utils.set_random_seed(config.train.seed)
    task, dc = config.model.task, config.data
    skipped = os.path.join(run_dir, SKIPPED_FILE)
    if os.path.exists(skipped):
        os.remove(skipped)

    train_m = tfdata.check_manifest(
        _as_manifest(train_data, config), task=task, labels=pairs.fixed_labels(task),
        skip_bad_rows=dc.skip_bad_rows, skipped_path=skipped, config=dc,
    )
    labels = pairs.label_vocab(train_m, task)
    train_m = pairs.prepare_manifest(train_m, config, seed=config.train.seed)  # pair tasks only
    val_m = None
    if val_data is not None:
        val_m = tfdata.check_manifest(
            _as_manifest(val_data, config), task=task, labels=labels,
            skip_bad_rows=dc.skip_bad_rows, skipped_path=skipped, config=dc,
        )
        val_m = pairs.prepare_manifest(val_m, config, seed=config.train.seed + 1)
    config = config.replace(model={"num_classes": len(labels)})
    heads.output_units(task, len(labels))  # fail early on a wrong label count
    logger.info("training on %d rows, %d labels%s", len(train_m), len(labels),
                f", validating on {len(val_m)} rows" if val_m is not None else "")

    preprocessor = None
    if config.model.uses_text:
        preprocessor = text.load_text_preprocessor(config.model.text_encoder, dc.sequence_length)
        if hasattr(preprocessor, "save"):
            preprocessor.save(os.path.join(run_dir, TOKENIZER_DIR))
        truncated = count_truncated(train_m.frame["text"].tolist(), preprocessor)
        if truncated:
            logger.warning("%d of %d training texts are longer than %d tokens and were truncated "
                           "(--sequence-length)", truncated, len(train_m), dc.sequence_length)

    strategy = select_strategy(config.train.strategy)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    logger.info("strategy %s: %d replica(s), global batch %d",
                type(strategy).__name__, strategy.num_replicas_in_sync, global_batch)
    common = dict(config=dc, preprocessor=preprocessor, labels=labels, task=task,
                  modalities=config.model.modalities, batch_size=global_batch)
    train_ds = tfdata.make_dataset(train_m, shuffle=True, seed=config.train.seed,
                                   shuffle_buffer=config.train.shuffle_buffer, **common)
    val_ds = tfdata.make_dataset(val_m, **common) if val_m is not None else None
    steps_per_epoch = math.ceil(len(train_m) / global_batch)

    save_config(config, os.path.join(run_dir, CONFIG_FILE))
    tfdata.save_labels(labels, os.path.join(run_dir, LABELS_FILE))
    with strategy.scope():
        model = build_model(config)
        compile_model(model, config, steps_per_epoch)
    check_free_space(model, run_dir)
    history = model.fit(
        train_ds, validation_data=val_ds, epochs=config.train.epochs,
        callbacks=default_callbacks(run_dir, config, val_ds is not None)
        + reporting_callbacks(run_dir, config, val_ds, val_m, labels) + list(callbacks or []),
        verbose=verbose,
    )
    atomic_save_model(model, os.path.join(run_dir, MODEL_FILE))
    if task in tasks.THRESHOLD_TASKS:  # multilabel, matching: thresholds.json
        y_val = tfdata.encode_labels(val_m, labels, task) if val_m is not None else None
        tasks.tune_and_save(model, val_ds, y_val, run_dir, task, labels)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    with open(os.path.join(run_dir, "history.json"), "w", encoding="utf-8") as f:
        json.dump(hist, f, indent=2)
    plots.save_png(plots.training_curves_figure(hist), os.path.join(run_dir, TRAINING_CURVES_FILE))
    logger.info("saved run to %s", run_dir)
    return TrainResult(model, hist, run_dir, config, labels)
