"""Training: strategy scope, optimizer schedule, callbacks, ``model.fit``, run directory.

A run directory holds ``config.yaml`` (enough to rebuild everything), ``labels.txt``,
``tokenizer/`` (the text preprocessor's vocabulary), ``checkpoints/``, ``logs/``
(TensorBoard, see :mod:`tfmm.training.callbacks`), ``history.json`` / ``history.csv``,
``training_curves.png`` and the final ``model.keras``, ``data_sources.json`` (the absolute
paths of the training and validation manifests, when they were files; ``tfmm export`` builds
its warmup requests from the validation rows), plus ``train_state.json``
(running/finished, strategy, replicas, global batch) and, while training,
``backup/<worker>/`` for crash-safe resume (see :mod:`tfmm.training.resume`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Optional

import keras
import tensorflow as tf

from tfmm import plots
from tfmm.config import RunConfig, save_config
from tfmm.data.manifest import Manifest, check_manifest, read_manifest, save_labels
from tfmm.data.pipeline import make_dataset
from tfmm.data.validation import count_truncated
from tfmm.files import atomic_save_model, write_json_atomic
from tfmm.models import text
from tfmm.run_dir import (
    CONFIG_FILE, DEFAULT_CACHE_DIR, HISTORY_FILE, LABELS_FILE, MODEL_FILE, SKIPPED_FILE, TOKENIZER_DIR,
    TRAINING_CURVES_FILE, write_data_sources,
)
from tfmm.tasks import build_model, get_task
from tfmm.training import cached_fit, distribute, feature_cache, keras_patches, losses, precision, resume, stages
from tfmm.training.callbacks import reporting_callbacks
from tfmm.training.checkpoint import AtomicBestCheckpoint, check_free_space
from tfmm.training.optimizer import (  # noqa: F401 (make_optimizer: public, used by callers)
    all_encoders_frozen, make_optimizer, resolve_train_defaults,
)
from tfmm.training.presets import resolve_preset

logger = logging.getLogger(__name__)

# The best checkpoint is written at most this often (and when training ends): a head's epoch on
# cached features takes milliseconds, rewriting the frozen encoders' weights takes seconds.
BEST_WRITE_INTERVAL_S = 30.0


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its history and where it was saved."""

    model: keras.Model
    history: dict
    run_dir: str
    config: RunConfig
    labels: list
    initial_epoch: int = 0


def compile_model(model: keras.Model, config: RunConfig, steps_per_epoch: int) -> None:
    """Compiles ``model`` with the task's loss and metrics (call inside the strategy scope).

    The optimizer is :func:`tfmm.training.optimizer.make_optimizer`'s: ``model``'s encoder
    sub-models train at ``learning_rate x train.encoder_lr_scale``, the rest at
    ``learning_rate`` (``None``: resolved by :func:`~tfmm.training.optimizer.resolve_train_defaults`).
    The loss is :func:`tfmm.training.losses.make_loss`'s: the task's, or its focal form
    (``train.loss: focal``).
    """
    task = get_task(config.model.task)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch, model),
        loss=losses.make_loss(task, config),
        metrics=task.metrics(config),
        jit_compile=precision.jit_compile_arg(config.train.jit_compile),
    )


def _as_manifest(source, config: RunConfig) -> Manifest:
    if isinstance(source, Manifest):
        return source
    return read_manifest(source, config.data, require_labels=get_task(config.model.task).labels_required(config))


def _check_writable(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".tfmm_write_test.{os.getpid()}")  # per process: workers may share path
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"output dir {path!r} is not writable: {e}") from e


def default_callbacks(run_dir: str, config: RunConfig, has_val: bool, resumed: Optional[dict] = None) -> list:
    """TensorBoard, best checkpoint, early stopping and a CSV log, all under ``run_dir``.

    ``resumed`` (``{"val_loss"/"loss": best value so far}`` of a resumed run) makes the CSV
    log append and the best checkpoint only improve on that value.
    """
    monitor = "val_loss" if has_val else "loss"
    best = AtomicBestCheckpoint(os.path.join(run_dir, "checkpoints", "best.weights.h5"), monitor=monitor,
                                min_interval=BEST_WRITE_INTERVAL_S)
    best.best = (resumed or {}).get(monitor)  # a resumed run's checkpoint only improves on it
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "logs")),
        best,
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=resumed is not None),
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
    overwrite: bool = False,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> TrainResult:
    """Trains a fused model on a manifest and writes a run directory.

    Distributed training (``config.train.strategy``, see :mod:`tfmm.training.distribute`): every
    worker runs this same call; only the chief writes ``output_dir``. An interrupted run
    (killed, preempted) resumes when called again with the same ``output_dir``, at the
    start of the interrupted epoch (see :mod:`tfmm.training.resume`).

    ``config.train.preset`` fills in the options left to ``None`` first
    (:mod:`tfmm.training.presets`); with ``train.two_stage`` (presets ``balanced``, ``best``)
    the head is trained first on cached frozen features in ``output_dir/stage1`` and this run
    starts from it (:mod:`tfmm.training.stages`).

    Args:
        config: the run configuration.
        train_data: training manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`).
        val_data: optional validation manifest (same forms).
        output_dir: the run directory (created).
        callbacks: extra Keras callbacks, added to the defaults.
        verbose: passed to ``model.fit`` (``"auto"`` shows a progress bar).
        overwrite: discard a previous run in ``output_dir`` and train from scratch.
        strategy: a ``tf.distribute`` strategy to use instead of ``config.train.strategy``.

    Returns:
        A :class:`TrainResult` (``initial_epoch`` > 0 when this call resumed a run).

    Raises:
        tfmm.data.ManifestError: bad rows (all listed) and ``skip_bad_rows`` is off.
        tfmm.training.resume.RunFinishedError: ``output_dir`` holds a finished run and ``overwrite`` is off.
        OSError: ``output_dir`` is not writable.

    Example:
        >>> result = tfmm.train(tfmm.RunConfig(), "data/train.csv", "data/val.csv", "runs/a")
        >>> result.history["val_accuracy"][-1]
    """
    # The strategy first: MultiWorkerMirroredStrategy must exist before TensorFlow runs an op.
    if strategy is None:
        strategy = distribute.select_strategy(config.train.strategy, config.train.devices)
    if strategy.num_replicas_in_sync > 1 or distribute.is_multi_worker(strategy):
        keras_patches.apply_distribute_fixes()
    run_dir = os.path.abspath(output_dir)
    run = dict(train_data=train_data, val_data=val_data, callbacks=callbacks, verbose=verbose, strategy=strategy)
    config = resolve_preset(config)
    if config.train.two_stage:  # stage 1 in RUN/stage1, then this run from its weights
        return stages.train_two_stage(_resolved(config, strategy), run_dir, _train_one, overwrite=overwrite, **run)
    return _train_one(config, run_dir, overwrite=overwrite, **run)


def _train_one(config: RunConfig, run_dir: str, *, train_data, val_data, callbacks, verbose, strategy,
               overwrite: bool = False, initial_model: Optional[keras.Model] = None) -> TrainResult:
    """One ordinary run (one stage) in ``run_dir``; ``initial_model``'s weights, when given,
    replace the fresh model's before training (see :func:`tfmm.training.stages.copy_weights`)."""
    config = _resolved(config, strategy)  # the preset first, then the learning rate and epochs
    _check_writable(run_dir)
    start = resume.prepare_run(run_dir, config, strategy, overwrite=overwrite)
    with distribute.worker_output_dir(run_dir, strategy) as write_dir:
        result = _train_in(write_dir, start, strategy, config, train_data, val_data, callbacks, verbose,
                           initial_model=initial_model)
        distribute.barrier(strategy)
    return dataclasses.replace(result, run_dir=run_dir)


@dataclasses.dataclass
class _Inputs:
    """What :func:`_prepare_inputs` hands to the later steps of a training run."""

    config: RunConfig  # with ``model.num_classes`` set from the labels
    labels: list
    train_m: Manifest
    val_m: Optional[Manifest]
    preprocessor: object
    train_ds: tf.data.Dataset
    val_ds: Optional[tf.data.Dataset]
    global_batch: int
    steps_per_epoch: int
    cached: list  # the frozen encoders whose features are cached (feature_cache.cached_modalities)


def _train_in(run_dir, start, strategy, config, train_data, val_data, callbacks, verbose,
              initial_model=None) -> TrainResult:
    """The body of :func:`train`: ``run_dir`` is where this worker writes (the chief: the
    run directory; another worker: a temporary folder)."""
    keras.utils.set_random_seed(config.train.seed)
    inputs = _prepare_inputs(run_dir, config, train_data, val_data, strategy)
    save_config(inputs.config, os.path.join(run_dir, CONFIG_FILE))
    save_labels(inputs.labels, os.path.join(run_dir, LABELS_FILE))
    write_data_sources(run_dir, train_data, val_data)
    model, optimizer_config = _build_and_compile(run_dir, start, strategy, inputs, initial_model)
    history = _fit(model, run_dir, start, strategy, inputs, optimizer_config, callbacks, verbose,
                   from_previous_stage=initial_model is not None)
    hist = _write_run(model, run_dir, start, inputs, history)
    return TrainResult(model, hist, run_dir, inputs.config, inputs.labels, initial_epoch=start.initial_epoch)


def _prepare_manifests(run_dir, config: RunConfig, train_data, val_data) -> tuple:
    """Checked training / validation manifests and the label vocabulary: ``(train_m, val_m, labels)``."""
    task, dc = get_task(config.model.task), config.data
    skipped = os.path.join(run_dir, SKIPPED_FILE)
    if os.path.exists(skipped):
        os.remove(skipped)
    train_m = check_manifest(
        _as_manifest(train_data, config), encoding=task.encoding, labels=task.fixed_labels,
        skip_bad_rows=dc.skip_bad_rows, skipped_path=skipped, config=dc,
    )
    labels = task.label_vocab(train_m)
    train_m = task.prepare_manifest(train_m, config, seed=config.train.seed)  # negatives, placeholders
    val_m = None
    if val_data is not None:
        val_m = check_manifest(
            _as_manifest(val_data, config), encoding=task.encoding, labels=labels,
            skip_bad_rows=dc.skip_bad_rows, skipped_path=skipped, config=dc,
        )
        val_m = task.prepare_manifest(val_m, config, seed=config.train.seed + 1)
    return train_m, val_m, labels


def _text_preprocessor(run_dir, config: RunConfig, train_m: Manifest):
    """The run's text preprocessor (saved to ``tokenizer/`` when it can be), or ``None``."""
    if not config.model.uses_text:
        return None
    dc = config.data
    preprocessor = text.load_text_preprocessor(text.text_spec(config.model), dc.sequence_length)
    if hasattr(preprocessor, "adapt"):  # embedding-bag: frequent training words get their own ids
        preprocessor.adapt(train_m.frame["text"].tolist())
    if hasattr(preprocessor, "save"):
        preprocessor.save(os.path.join(run_dir, TOKENIZER_DIR))
    truncated = count_truncated(train_m.frame["text"].tolist(), preprocessor)
    if truncated:
        logger.warning("%d of %d training texts are longer than %d tokens and were truncated "
                       "(--sequence-length)", truncated, len(train_m), dc.sequence_length)
    return preprocessor


def _prepare_inputs(run_dir, config: RunConfig, train_data, val_data, strategy) -> _Inputs:
    """Manifests, labels, text preprocessor and the ``tf.data`` pipelines of a run."""
    train_m, val_m, labels = _prepare_manifests(run_dir, config, train_data, val_data)
    task = get_task(config.model.task)
    config = config.replace(model={"num_classes": len(labels)})
    task.output_units(len(labels))  # fail early on a wrong label count
    logger.info("training on %d rows, %d labels%s", len(train_m), len(labels),
                f", validating on {len(val_m)} rows" if val_m is not None else "")
    preprocessor = _text_preprocessor(run_dir, config, train_m)

    global_batch = distribute.global_batch_size(config.train.batch_size, strategy)
    logger.info("strategy %s: %d replica(s), global batch %d",
                distribute.strategy_name(strategy), strategy.num_replicas_in_sync, global_batch)
    common = dict(config=config.data, preprocessor=preprocessor, labels=labels, targets=task.encoding,
                  modalities=config.model.modalities, batch_size=global_batch)
    train_ds = make_dataset(train_m, shuffle=True, seed=config.train.seed,
                            shuffle_buffer=config.train.shuffle_buffer, **common)
    val_ds = make_dataset(val_m, **common) if val_m is not None else None
    cached = feature_cache.cached_modalities(config, strategy=strategy, manifests=(train_m, val_m))
    # With --feature-views and the image features cached, an epoch sees each row 1 + N times.
    views = feature_cache.cached_views(config, cached)
    return _Inputs(config, labels, train_m, val_m, preprocessor, train_ds, val_ds, global_batch,
                   steps_per_epoch=math.ceil(len(train_m) * (1 + views) / global_batch), cached=cached)


def _build_and_compile(run_dir, start, strategy, inputs: _Inputs, initial_model=None) -> tuple:
    """``(model, optimizer_config)``: the model built (its weights from ``initial_model`` when
    given) and compiled in the strategy's scope."""
    config = inputs.config
    with strategy.scope(), precision.dtype_policy(config.train.mixed_precision):
        model = build_model(config)
        if initial_model is not None:
            copied = stages.copy_weights(initial_model, model)
            logger.info("weights of %s initialised from the previous stage's model", ", ".join(copied))
        optimizer_config = _scaled_learning_rate(config, strategy)
        compile_model(model, optimizer_config, inputs.steps_per_epoch)
    check_free_space(model, run_dir)
    if start.chief:
        resume.write_state(start.run_dir, distribution={
            **distribute.describe(strategy, config.train.batch_size),
            "learning_rate": optimizer_config.train.learning_rate})
    return model, optimizer_config


def _fit(model, run_dir, start, strategy, inputs: _Inputs, optimizer_config, callbacks, verbose,
         from_previous_stage: bool = False):
    """``model.fit`` with the run's callbacks (and class weights, ``train.class_weight``), on
    cached encoder features when it can; the ``History``. A run started from a previous stage's
    weights keeps them when no epoch improves their validation loss
    (:class:`tfmm.training.stages.KeepStartingWeights`; not on a resumed run)."""
    config = inputs.config
    class_weight = losses.class_weights(get_task(config.model.task), config, inputs.train_m, inputs.labels)
    backup = resume.TrainingBackup(start.backup_dir, save_freq=config.train.save_every or "epoch")
    fit_callbacks = (
        default_callbacks(run_dir, config, inputs.val_ds is not None, start.best if start.resumed else None)
        + reporting_callbacks(run_dir, config, inputs.val_ds, inputs.val_m, inputs.labels) + list(callbacks or [])
    )
    if from_previous_stage and inputs.val_ds is not None and not start.resumed:  # after early stopping's restore
        record = os.path.join(run_dir, stages.STAGES_FILE) if start.chief else ""
        fit_callbacks.append(stages.KeepStartingWeights(model, inputs.val_ds, record))
    fit_callbacks.append(backup)  # the backup last: each epoch is logged before it counts as done
    if inputs.cached:  # frozen encoders run once; the rest trains on their stored features
        return cached_fit.fit_with_cached_features(
            model, config, inputs.train_m, inputs.val_m, cached=inputs.cached, labels=inputs.labels,
            compile_fn=lambda m: compile_model(m, optimizer_config, inputs.steps_per_epoch),
            cache_dir=config.train.cache_dir or os.path.join(run_dir, DEFAULT_CACHE_DIR),
            preprocessor=inputs.preprocessor, strategy=strategy, batch_size=inputs.global_batch,
            callbacks=fit_callbacks, verbose=verbose, class_weight=class_weight,
        )
    return model.fit(  # shuffle=False: train_ds is shuffled already (seeded)
        inputs.train_ds, validation_data=inputs.val_ds, epochs=config.train.epochs,
        callbacks=fit_callbacks, verbose=verbose, shuffle=False, class_weight=class_weight,
    )


def _write_run(model, run_dir, start, inputs: _Inputs, history) -> dict:
    """Writes ``model.keras``, thresholds, ``history.json`` and the training curves; marks the
    run finished. Returns the whole history (epochs before a resume included)."""
    config, task, labels = inputs.config, get_task(inputs.config.model.task), inputs.labels
    atomic_save_model(model, os.path.join(run_dir, MODEL_FILE))
    y_val = task.encode_targets(inputs.val_m, labels) if inputs.val_m is not None else None
    task.after_fit(model, inputs.val_ds, y_val, run_dir, labels,  # calibration.json, thresholds.json
                   calibrate=config.train.calibrate)
    hist = {k: list(start.prior_history.get(k, [])) + [float(v) for v in history.history.get(k, [])]
            for k in {**start.prior_history, **history.history}}
    write_json_atomic(os.path.join(run_dir, HISTORY_FILE), hist)
    plots.save_png(plots.training_curves_figure(hist), os.path.join(run_dir, TRAINING_CURVES_FILE))
    completed = start.initial_epoch + len(history.history.get("loss", []))
    resume.finish_run(start, epochs_completed=completed, stopped_early=completed < config.train.epochs)
    logger.info("saved run to %s", run_dir)
    return hist


def _resolved(config: RunConfig, strategy: tf.distribute.Strategy) -> RunConfig:
    """``config`` with its preset's options (:func:`~tfmm.training.presets.resolve_preset`) and the
    learning rate and the epochs their defaults (``None``) stand for, logged; ``config.yaml``
    keeps these values, so a resumed run compares like with like."""
    config = resolve_preset(config)
    head_only = feature_cache.head_only_cached(config, strategy)
    resolved = resolve_train_defaults(config, head_only_cached=head_only)
    tc, rc = config.train, resolved.train
    if tc.learning_rate is None:
        logger.info("learning rate %g (the default when %s)", rc.learning_rate,
                    "every encoder is frozen" if all_encoders_frozen(config) else "encoders are fine-tuned")
    if tc.epochs is None:
        logger.info("epochs %d (default%s)", rc.epochs,
                    ", a head on cached features: early stopping ends it" if head_only else "")
    return resolved


def _scaled_learning_rate(config: RunConfig, strategy: tf.distribute.Strategy) -> RunConfig:
    """The config the optimizer is built from: the learning rate x replicas when
    ``scale_learning_rate`` is on (config.yaml keeps the unscaled value)."""
    tc = config.train
    lr = distribute.scaled_learning_rate(tc.learning_rate, strategy, tc.scale_learning_rate)
    if lr != tc.learning_rate:
        logger.info("learning rate scaled linearly to %g (%g x %d replicas)", lr, tc.learning_rate,
                    strategy.num_replicas_in_sync)
    return config.replace(train={"learning_rate": lr})
