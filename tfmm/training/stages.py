"""Two-stage training (``train.two_stage``): linear probe, then fine-tune.

A freshly initialised head trained together with pretrained encoders sends large, random
gradients into them and spoils the features it should learn from. So:

1. **Stage 1** trains the head alone on the frozen encoders' cached features (an ordinary
   run with preset ``fast`` in ``RUN/stage1``; with ``head_seeds`` > 1, one run per seed,
   ``RUN/stage1_seed<S>`` for the extra seeds), until the validation loss stops improving.
2. **Stage 2** is the run in ``RUN`` itself: the model the config describes (e.g. the top
   blocks of both encoders unfrozen), its weights initialised from stage 1's model (the one
   with the lowest validation loss), fine-tuned at the config's (lower) learning rate.

``RUN/stages.json`` records each stage-1 run's validation loss and which one stage 2 started
from. Resuming: a finished stage 1 is not trained again; an interrupted one (or stage 2)
resumes like any run (:mod:`tfmm.training.resume`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Callable

import keras

from tfmm.config import RunConfig
from tfmm.files import write_json_atomic
from tfmm.models import head_ensemble
from tfmm.run_dir import DEFAULT_CACHE_DIR, HISTORY_FILE, MODEL_FILE
from tfmm.training import distribute, resume
from tfmm.training.presets import stage1_config

logger = logging.getLogger(__name__)

STAGE1_DIR = "stage1"
STAGES_FILE = "stages.json"


def stage1_dirs(run_dir: str, config: RunConfig) -> dict:
    """``{seed: stage-1 run directory}`` of a two-stage run (the config's seed first): one per
    ``head_seeds``, or one per member of a ``head_ensemble``."""
    seeds = [config.train.seed + i for i in range(max(config.train.head_seeds or 1, config.model.head_ensemble or 1))]
    return {s: os.path.join(run_dir, STAGE1_DIR if i == 0 else f"{STAGE1_DIR}_seed{s}") for i, s in enumerate(seeds)}


def best_loss(run_dir: str) -> float:
    """The lowest validation loss (else training loss) in a finished run's ``history.json``."""
    with open(os.path.join(run_dir, HISTORY_FILE), encoding="utf-8") as f:
        history = json.load(f)
    values = [v for v in history.get("val_loss") or history.get("loss") or [] if not math.isnan(v)]
    return min(values) if values else math.inf


def _run_stage1(config: RunConfig, run_dir: str, seed: int, stage_dir: str, train_one: Callable,
                overwrite: bool, **kwargs) -> float:
    """Trains (or, when finished already, keeps) one stage-1 run; its best loss."""
    cache_dir = config.train.cache_dir or os.path.join(run_dir, DEFAULT_CACHE_DIR)  # shared by the seeds
    s1 = stage1_config(config, seed).replace(train={"cache_dir": cache_dir})
    state = resume.read_state(stage_dir)
    if not overwrite and state and state.get("status") == "finished":
        logger.info("stage 1 (seed %d): finished already in %s; not trained again", seed, stage_dir)
    else:
        logger.info("stage 1 of 2 (seed %d): only the head trains, on cached features of the frozen "
                    "encoders, in %s", seed, stage_dir)
        train_one(s1, stage_dir, overwrite=overwrite, **kwargs)
    return best_loss(stage_dir)


def train_two_stage(config: RunConfig, run_dir: str, train_one: Callable, *, overwrite: bool = False, **kwargs):
    """Runs stage 1 (every seed), then stage 2 in ``run_dir`` from the best stage-1 model.

    Args:
        config: the resolved config of stage 2 (``train.two_stage`` on).
        run_dir: the run directory (absolute).
        train_one: ``(config, run_dir, *, overwrite, initial_model=None, **kwargs) -> TrainResult``,
            one ordinary run (:func:`tfmm.training.train.train` without presets and stages).
        overwrite: discard previous runs of both stages.
        **kwargs: passed to ``train_one`` (data, callbacks, verbose, strategy).

    Returns:
        Stage 2's ``TrainResult``.
    """
    if not overwrite and (resume.read_state(run_dir) or {}).get("status") == "finished":
        return train_one(config, run_dir, overwrite=False, **kwargs)  # raises RunFinishedError
    dirs = stage1_dirs(run_dir, config)
    losses = {seed: _run_stage1(config, run_dir, seed, stage_dir, train_one, overwrite, **kwargs)
              for seed, stage_dir in dirs.items()}
    ensemble = (config.model.head_ensemble or 1) > 1
    winner = min(losses, key=losses.get)
    starts = list(dirs.values()) if ensemble else [dirs[winner]]
    strategy = kwargs.get("strategy")
    if strategy is None or distribute.is_chief(strategy):  # the chief alone writes shared files
        write_json_atomic(os.path.join(run_dir, STAGES_FILE), {
            "stage1": {str(s): {"run_dir": os.path.relpath(d, run_dir), "best_loss": losses[s]}
                       for s, d in dirs.items()},
            "stage1_winner_seed": None if ensemble else winner,
            "stage2_from": [os.path.relpath(d, run_dir) for d in starts] if ensemble
            else os.path.relpath(starts[0], run_dir),
        })
    if ensemble:
        logger.info("stage 1: the %d heads are averaged into one (validation losses alone: %s)", len(losses),
                    ", ".join(f"seed {s}: {v:.4f}" for s, v in losses.items()))
    elif len(losses) > 1:
        logger.info("stage 1: seed %d has the lowest validation loss (%s)", winner,
                    ", ".join(f"seed {s}: {v:.4f}" for s, v in losses.items()))
    mc = config.model
    logger.info("stage 2 of 2: fine-tuning from %s; trainable: image encoder %s, text encoder %s, head; "
                "learning rate %g (encoders x%g), %d epochs", ", ".join(starts), _describe(mc.freeze_image,
                mc.unfreeze_image_blocks, "blocks"), _describe(mc.freeze_text, mc.unfreeze_text_layers, "layers"),
                config.train.learning_rate, config.train.encoder_lr_scale, config.train.epochs)
    initial = [load_stage1_model(d) for d in starts]
    return train_one(config, run_dir, overwrite=overwrite, initial_model=initial if ensemble else initial[0], **kwargs)


def load_stage1_model(stage1_dir: str) -> keras.Model:
    """A finished stage-1 run's ``model.keras`` (uncompiled), to start stage 2 from."""
    return keras.models.load_model(os.path.join(stage1_dir, MODEL_FILE), compile=False)


def _describe(frozen, blocks, unit: str) -> str:
    if frozen:
        return "frozen"
    return f"top {blocks} {unit}" if blocks else "all"


def copy_weights(source, target: keras.Model) -> list:
    """Sets each top-level layer of ``target`` (encoders, head) to the weights of ``source``'s
    layer of the same name; returns the names copied.

    ``source`` may be a list of models, one per member of ``target``'s ensemble head
    (:mod:`tfmm.models.head_ensemble`): member ``i`` then takes model ``i``'s ``fusion_head``, and
    every other layer comes from the first model.

    Raises:
        ValueError: a layer of ``target`` has no counterpart in ``source``, their weights differ
            in number or shape (the two configs do not describe the same model), or the number
            of models is not the number of members.
    """
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    copied = []
    for layer in target.layers:
        if not layer.weights:
            continue
        parts = head_ensemble.members(layer) if layer.name == "fusion_head" else []
        if parts and not head_ensemble.members(_counterpart(sources[0], layer.name)):
            if len(sources) != len(parts):
                raise ValueError(f"the ensemble head has {len(parts)} members; received {len(sources)} "
                                 "single-head models to start them from")
            for member, model in zip(parts, sources):
                _copy_layer(_counterpart(model, "fusion_head"), member)
        else:
            _copy_layer(_counterpart(sources[0], layer.name), layer)
        copied.append(layer.name)
    return copied


def _counterpart(source: keras.Model, name: str):
    try:
        return source.get_layer(name)
    except ValueError as e:
        raise ValueError(f"stage 1's model has no layer {name!r} to start stage 2's from; "
                         f"its layers: {[lay.name for lay in source.layers]}") from e


def _copy_layer(other, layer) -> None:
    values = other.get_weights()
    shapes = [tuple(w.shape) for w in layer.weights]
    if [tuple(v.shape) for v in values] != shapes:
        raise ValueError(f"layer {layer.name!r}: stage 1's weights have shapes "
                         f"{[tuple(v.shape) for v in values]}, stage 2 expects {shapes}")
    layer.set_weights(values)


class KeepStartingWeights(keras.callbacks.Callback):
    """Stage 2's guard: its starting weights (stage 1's) are kept when no epoch improves on them.

    Before the first epoch it scores ``model`` (the whole model, compiled) on ``val_data`` (a
    ``tf.data.Dataset`` of ``(inputs, targets)`` or an ``(x, y)`` tuple); after
    the last (once early stopping has restored its best epoch) it puts the starting weights back
    if no epoch's ``val_loss`` was lower, and logs which weights the run keeps. ``record``, when
    given, is a JSON file (``RUN/stages.json``) that gets a ``stage2`` entry with both losses.
    """

    def __init__(self, model: keras.Model, val_data, record: str = ""):
        super().__init__()
        self._full, self._val, self._record = model, val_data, record
        self.start_loss, self.best_loss, self.kept_start = math.inf, math.inf, False

    def on_train_begin(self, logs=None):
        self._start_weights = self._full.get_weights()
        x, y = self._val if isinstance(self._val, tuple) else (self._val, None)  # a dataset, or (x, y)
        self.start_loss = float(self._full.evaluate(x, y, verbose=0, return_dict=True)["loss"])
        logger.info("stage 2 starts at validation loss %.4f", self.start_loss)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if value is not None and not math.isnan(value):
            self.best_loss = min(self.best_loss, float(value))

    def on_train_end(self, logs=None):
        self.kept_start = not self.best_loss < self.start_loss
        if self.kept_start:
            self._full.set_weights(self._start_weights)
            logger.info("stage 2 did not improve the validation loss (best epoch %.4f, stage 1 %.4f): the run "
                        "keeps stage 1's weights", self.best_loss, self.start_loss)
        else:
            logger.info("stage 2 improved the validation loss: %.4f -> %.4f", self.start_loss, self.best_loss)
        if self._record and os.path.exists(self._record):
            with open(self._record, encoding="utf-8") as f:
                stages = json.load(f)
            stages["stage2"] = {"start_val_loss": self.start_loss, "best_val_loss": self.best_loss,
                                "kept": "stage1" if self.kept_start else "stage2"}
            write_json_atomic(self._record, stages)
