"""The KerasTuner side of ``tfmm tune``: a ``keras_tuner.Tuner`` whose trial is a tfmm run.

:class:`RunTuner` overrides ``run_trial``: it sets the trial's hyperparameters in the base
config (:func:`tfmm.tuning.space.apply_values`), trains an ordinary run with
:func:`tfmm.training.train.train` in ``RUNS_DIR/<trial id>`` and returns the run's metrics at
its best epoch for the objective. KerasTuner's oracle (random search or Bayesian
optimization, seeded) picks the values and keeps the trial records in ``DIR/keras_tuner``,
so a search rerun with the same ``DIR`` continues where it stopped: a trial that was
interrupted is run again, and its tfmm run resumes from its last finished epoch.

This module imports KerasTuner; :mod:`tfmm.tuning.runner` imports it only when a search runs.
"""

from __future__ import annotations

import json
import logging
import os
import time

import keras_tuner

from tfmm.data.validation import ManifestError
from tfmm.files import write_json_atomic
from tfmm.run_dir import HISTORY_FILE
from tfmm.training import resume
from tfmm.tuning import records
from tfmm.tuning.space import FIELDS, apply_values

logger = logging.getLogger(__name__)

PROJECT_NAME = "keras_tuner"  # KerasTuner's folder in DIR: oracle.json, trial_*/trial.json
TRIAL_FILE = "tune_trial.json"  # in each trial's run dir: objective, best epoch, seconds
ORACLES = {"random": keras_tuner.oracles.RandomSearchOracle,
           "bayesian": keras_tuner.oracles.BayesianOptimizationOracle}


class ObjectiveNotFoundError(ValueError):
    """The runs do not report the objective (a wrong ``--objective`` for the task)."""


# Errors that no other hyperparameters would avoid: the search stops with them.
FATAL_ERRORS = (ManifestError, ObjectiveNotFoundError, OSError, ImportError, MemoryError)


def make_oracle(algorithm: str, objective, max_trials: int, hyperparameters, seed: int):
    """The seeded KerasTuner oracle for ``algorithm`` (a key of :data:`ORACLES`)."""
    if algorithm not in ORACLES:
        raise ValueError(f"algorithm must be one of {list(ORACLES)}; received {algorithm!r}")
    return ORACLES[algorithm](objective=objective, max_trials=max_trials, hyperparameters=hyperparameters,
                              seed=seed, tune_new_entries=False, allow_new_entries=False)


def best_epoch(history: dict, objective) -> tuple:
    """``(epoch index, {metric: value at that epoch})`` of the epoch best for ``objective``.

    Raises:
        ObjectiveNotFoundError: the history has no values for the objective (the message
            lists what it has).
    """
    values = history.get(objective.name)
    if not values:
        raise ObjectiveNotFoundError(f"objective {objective.name!r} is not in the run's history; it has "
                         f"{sorted(history)}. Pass --objective with one of them")
    pick = min if objective.direction == "min" else max
    epoch = pick(range(len(values)), key=lambda i: values[i])
    return epoch, {k: float(v[epoch]) for k, v in history.items() if len(v) > epoch}


def read_trial_record(run_dir: str) -> dict:
    """A trial run's :data:`TRIAL_FILE` (``{}`` when the trial did not finish)."""
    try:
        with open(os.path.join(run_dir, TRIAL_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class RunTuner(keras_tuner.Tuner):
    """A KerasTuner ``Tuner`` whose trials are tfmm training runs.

    Args:
        oracle: a KerasTuner oracle (:func:`make_oracle`).
        base_config: the :class:`~tfmm.config.RunConfig` each trial starts from.
        train_data / val_data: the manifests every trial trains and validates on.
        runs_dir: trial ``<id>`` trains in ``runs_dir/<id>``.
        verbose: ``model.fit`` verbosity of the trials.
        **kwargs: ``keras_tuner.Tuner`` arguments (``directory``, ``overwrite``, ...).

    Example:
        >>> tuner = RunTuner(make_oracle("random", keras_tuner.Objective("val_loss", "min"), 5, hp, 42),
        ...                  base_config=config, train_data="train.csv", val_data="val.csv",
        ...                  runs_dir="tune/trials", directory="tune", project_name="keras_tuner")
        >>> tuner.search()
    """

    def __init__(self, oracle, *, base_config, train_data, val_data, runs_dir: str, verbose=0, **kwargs):
        self.base_config = base_config
        self.train_data, self.val_data = train_data, val_data
        self.runs_dir = runs_dir
        self.verbose = verbose
        self.fatal_error = None
        super().__init__(oracle, **kwargs)
        self.oracle.verbose = 0  # one log line per trial instead of KerasTuner's tables

    def run_trial(self, trial, *args, **kwargs) -> dict:
        """Trains trial ``trial.trial_id``'s run; returns its metrics at the objective's best epoch."""
        run_dir = os.path.join(self.runs_dir, trial.trial_id)
        started = time.monotonic()
        try:
            config = apply_values(self.base_config, trial.hyperparameters.values)
            history = self._train(config, run_dir)
            epoch, metrics = best_epoch(history, self.oracle.objective)
        except FATAL_ERRORS as e:
            self.fatal_error = e
            raise keras_tuner.errors.FatalError(str(e)) from e
        except Exception as e:  # this trial's values failed (e.g. more unfrozen blocks than exist)
            logger.warning("trial %s failed: %s: %s", trial.trial_id, type(e).__name__, e)
            raise keras_tuner.errors.FailedTrialError(f"{type(e).__name__}: {e}") from e
        seconds = time.monotonic() - started
        write_json_atomic(os.path.join(run_dir, TRIAL_FILE), {
            "trial": trial.trial_id, "objective": self.oracle.objective.name,
            "value": metrics[self.oracle.objective.name], "best_epoch": epoch + 1,
            "seconds": round(seconds, 2)})
        return metrics

    def _train(self, config, run_dir: str) -> dict:
        """The run's history: trained now, resumed if it was interrupted, or read back if it
        finished before the search was (the oracle gives a trial id the same values again)."""
        from tfmm.training.train import train

        state = resume.read_state(run_dir)
        history_path = os.path.join(run_dir, HISTORY_FILE)
        if state and state.get("status") == "finished" and os.path.exists(history_path):
            logger.info("trial run %s had finished; reading its history", run_dir)
            with open(history_path, encoding="utf-8") as f:
                return json.load(f)
        return train(config, self.train_data, self.val_data, run_dir, verbose=self.verbose).history

    def on_trial_end(self, trial):
        """KerasTuner's bookkeeping, then one progress line: values, result, best so far."""
        super().on_trial_end(trial)
        trial = self.oracle.get_trial(trial.trial_id)  # the oracle's copy holds the score
        done = sum(t.status == "COMPLETED" for t in self.oracle.trials.values())
        values = apply_values(self.base_config, trial.hyperparameters.values)
        shown = " ".join(f"{k}={_value_text(values, k)}" for k in trial.hyperparameters.values)
        name = self.oracle.objective.name
        if trial.status == "COMPLETED":
            seconds = read_trial_record(os.path.join(self.runs_dir, trial.trial_id)).get("seconds", float("nan"))
            result = f"{name} {trial.score:.4f} in {seconds:.1f} s"
        else:
            result = f"{trial.status.lower()}: {records.last_line(trial.message)}"
        best = best_trials(self.oracle)
        best_text = f"; best {name} {best[0].score:.4f} (trial {best[0].trial_id})" if best else ""
        logger.info("trial %s (%d of %d done): %s -> %s%s", trial.trial_id, done,
                    self.oracle.max_trials, shown, result, best_text)


def best_trials(oracle, n: int = 1) -> list:
    """The ``n`` best completed trials (KerasTuner's ``get_best_trials`` pads with failed ones)."""
    return [t for t in oracle.get_best_trials(n) if t.status == "COMPLETED"]


def _value_text(config, name: str) -> str:
    section, field = FIELDS[name]
    value = getattr(getattr(config, section), field)
    return f"{value:.3g}" if isinstance(value, float) else str(value)
