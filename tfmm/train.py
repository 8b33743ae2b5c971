"""Training: strategy scope, optimizer schedule, callbacks, ``model.fit``, run directory.

A run directory holds ``config.yaml`` (enough to rebuild everything), ``labels.txt``,
``tokenizer/`` (the text preprocessor's vocabulary), ``checkpoints/``, ``logs/``
(TensorBoard), ``history.json`` and the final ``model.keras``.
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
from tfmm import cache as feature_cache
from tfmm import heads, precision, text
from tfmm.config import RunConfig, save_config
from tfmm.model import build_model

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.keras"
TOKENIZER_DIR = "tokenizer"
SKIPPED_FILE = "skipped_rows.csv"


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
        jit_compile=precision.jit_compile_arg(config.train.jit_compile),
    )


def _as_manifest(source, config: RunConfig) -> tfdata.Manifest:
    if isinstance(source, tfdata.Manifest):
        return source
    return tfdata.read_manifest(source, config.data)


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
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", "best.weights.h5"),
            monitor=monitor, save_best_only=True, save_weights_only=True,
        ),
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
        _as_manifest(train_data, config), task=task,
        skip_bad_rows=dc.skip_bad_rows, skipped_path=skipped,
    )
    labels = tfdata.build_label_vocab(train_m, task)
    val_m = None
    if val_data is not None:
        val_m = tfdata.check_manifest(
            _as_manifest(val_data, config), task=task, labels=labels,
            skip_bad_rows=dc.skip_bad_rows, skipped_path=skipped,
        )
    config = config.replace(model={"num_classes": len(labels)})
    heads.output_units(task, len(labels))  # fail early on a wrong label count
    logger.info("training on %d rows, %d labels%s", len(train_m), len(labels),
                f", validating on {len(val_m)} rows" if val_m is not None else "")

    preprocessor = None
    if config.model.uses_text:
        preprocessor = text.load_text_preprocessor(config.model.text_encoder, dc.sequence_length)
        if hasattr(preprocessor, "save"):
            preprocessor.save(os.path.join(run_dir, TOKENIZER_DIR))

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
    with strategy.scope(), precision.dtype_policy(config.train.mixed_precision):
        model = build_model(config)
        compile_model(model, config, steps_per_epoch)
    fit_callbacks = default_callbacks(run_dir, config, val_ds is not None) + list(callbacks or [])
    cached = feature_cache.cached_modalities(config, strategy=strategy, manifests=(train_m, val_m))
    if cached:  # frozen encoders run once; the rest trains on their stored features
        history = feature_cache.fit_with_cached_features(
            model, config, train_m, val_m, cached=cached, labels=labels,
            compile_fn=lambda m: compile_model(m, config, steps_per_epoch),
            cache_dir=config.train.cache_dir or os.path.join(run_dir, feature_cache.DEFAULT_CACHE_DIR),
            preprocessor=preprocessor, strategy=strategy, batch_size=global_batch,
            callbacks=fit_callbacks, verbose=verbose,
        )
    else:
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=config.train.epochs,
            callbacks=fit_callbacks, verbose=verbose,
        )
    model.save(os.path.join(run_dir, MODEL_FILE))
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    with open(os.path.join(run_dir, "history.json"), "w", encoding="utf-8") as f:
        json.dump(hist, f, indent=2)
    logger.info("saved run to %s", run_dir)
    return TrainResult(model, hist, run_dir, config, labels)
