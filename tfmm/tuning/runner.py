"""``tfmm.tune``: a KerasTuner search whose trials are ordinary tfmm training runs.

The output directory holds

- ``trials/<id>/``: each trial's run directory (``config.yaml``, ``model.keras``, ...);
- ``keras_tuner/``: KerasTuner's oracle and trial records (a rerun continues the search);
- ``feature_cache/``: frozen encoders' features, computed once and shared by every trial
  (unless the base config names its own ``cache_dir``);
- ``search.json``: the base config, space, objective and algorithm (a rerun must match it);
- ``trials.csv``: one row per trial (see :mod:`tfmm.tuning.records`);
- ``best_config.yaml``: the best trial's full run config, for ``tfmm train --config``.

Every trial uses the base config's seed, so trials differ only in their hyperparameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import logging
import os
import shutil
from typing import Optional

from tfmm.config import RunConfig, load_config, save_config
from tfmm.files import write_json_atomic
from tfmm.run_dir import CONFIG_FILE, DEFAULT_CACHE_DIR
from tfmm.tuning import records
from tfmm.tuning.space import SearchSpace, default_space, to_hyperparameters

logger = logging.getLogger(__name__)

ALGORITHMS = ("random", "bayesian")
INSTALL_HINT = 'tfmm tune needs KerasTuner: pip install "tfmm[tune]" (or pip install "keras-tuner>=1.4")'
TRIALS_DIR = "trials"
SEARCH_FILE = "search.json"
TRIALS_CSV = "trials.csv"
BEST_CONFIG_FILE = "best_config.yaml"


@dataclasses.dataclass
class TuneResult:
    """What :func:`search` returns."""

    best_config: RunConfig
    best_trial: str
    objective: str
    rows: list  # trials.csv's rows
    output_dir: str
    best_config_path: str
    trials_csv: str
    cache_dir: str  # the feature cache the trials shared ("" when the base config named its own)


def _tuner_module():
    try:
        return importlib.import_module("tfmm.tuning.tuner")
    except ImportError as e:
        if (e.name or "").split(".")[0] != "keras_tuner":
            raise
        raise ImportError(INSTALL_HINT) from e


def parse_objective(spec: str):
    """``"val_loss"``, ``"val_accuracy"`` or ``"NAME:min"``/``"NAME:max"`` as a
    ``keras_tuner.Objective`` (without a direction: ``min`` for losses and errors, else ``max``)."""
    import keras_tuner

    name, _, direction = spec.partition(":")
    if not direction:
        direction = "min" if name.endswith("loss") or "error" in name else "max"
    if not name or direction not in ("min", "max"):
        raise ValueError(f"objective must be NAME, NAME:min or NAME:max (e.g. val_loss, val_accuracy); received {spec!r}")
    return keras_tuner.Objective(name, direction)


def _check_search_file(output_dir: str, description: dict) -> None:
    """Writes ``search.json``, or checks that an earlier search in ``output_dir`` was the same."""
    path = os.path.join(output_dir, SEARCH_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        changed = sorted(k for k in description if previous.get(k) != description[k])
        if changed:
            raise ValueError(f"{output_dir} holds a search with a different {', '.join(changed)}; "
                             "continue it with the same options, pass a new --output-dir, or --overwrite")
    write_json_atomic(path, description)


def _clear(output_dir: str, project: str) -> None:
    for name in (TRIALS_DIR, project):
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    for name in (SEARCH_FILE, TRIALS_CSV, BEST_CONFIG_FILE):
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))


def search(
    config: RunConfig,
    train_data,
    val_data,
    output_dir: str = "tfmm_tune",
    *,
    trials: int = 10,
    space: Optional[SearchSpace] = None,
    objective: str = "val_loss",
    algorithm: str = "random",
    overwrite: bool = False,
    verbose=0,
) -> TuneResult:
    """Runs the search and writes ``output_dir`` (see the module doc); :func:`tune` returns
    only the best config.

    Raises:
        ImportError: KerasTuner is not installed (the message says what to install).
        ValueError: bad arguments, an objective the runs do not report, every trial failed,
            or ``output_dir`` holds a different search (without ``overwrite``).
    """
    from tfmm.training.presets import resolve_preset

    config = resolve_preset(config)  # the space depends on what the base config's preset freezes
    space = space if space is not None else default_space(config)
    _check_arguments(val_data, trials, algorithm, space)
    tuner_mod = _tuner_module()
    goal = parse_objective(objective)
    output_dir = os.path.abspath(output_dir)
    if overwrite:
        _clear(output_dir, tuner_mod.PROJECT_NAME)
    os.makedirs(output_dir, exist_ok=True)
    _check_search_file(output_dir, {"config": config.to_dict(), "space": space.to_dict(),
                                    "objective": f"{goal.name}:{goal.direction}", "algorithm": algorithm})
    shared_cache = "" if config.train.cache_dir else os.path.join(output_dir, DEFAULT_CACHE_DIR)
    base = config.replace(train={"cache_dir": shared_cache}) if shared_cache else config
    with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
        tuner = tuner_mod.RunTuner(
            tuner_mod.make_oracle(algorithm, goal, trials, to_hyperparameters(space), seed=config.train.seed),
            base_config=base, train_data=train_data, val_data=val_data,
            runs_dir=os.path.join(output_dir, TRIALS_DIR), verbose=verbose,
            directory=output_dir, project_name=tuner_mod.PROJECT_NAME,
        )
    if tuner.oracle.trials:
        logger.info("continuing the search in %s: %d of %d trial(s) started before", output_dir,
                    len(tuner.oracle.trials), trials)
    logger.info("searching %s over %d trial(s) (%s, objective %s %s)", ", ".join(space.searched), trials,
                algorithm, goal.direction, goal.name)
    _run(tuner)
    best_config, best_id, rows = _write_results(tuner, tuner_mod, base, space, output_dir, config.train.cache_dir)
    return TuneResult(best_config, best_id, goal.name, rows, output_dir, os.path.join(output_dir, BEST_CONFIG_FILE),
                      os.path.join(output_dir, TRIALS_CSV), shared_cache)


def _check_arguments(val_data, trials, algorithm: str, space: SearchSpace) -> None:
    if val_data is None:
        raise ValueError("tfmm tune needs validation data (--val-data): the objective is measured on it")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1; received {trials!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}; received {algorithm!r}")
    if not space.searched:
        raise ValueError(f"the search space has nothing to vary: {space.to_dict()}; give some "
                         "--tune-* option more than one value")


def _run(tuner) -> None:
    """``tuner.search()``, with the original error when a trial hit one that ends the search."""
    import keras_tuner
    from keras_tuner.src import config as kt_config

    debug, kt_config.DEBUG = kt_config.DEBUG, logger.isEnabledFor(logging.DEBUG)  # True: a traceback per failed trial
    try:
        tuner.search()
    except keras_tuner.errors.FatalError:
        if tuner.fatal_error is not None:
            raise tuner.fatal_error from None
        raise
    except RuntimeError as e:  # KerasTuner stops after 3 failed trials in a row
        if "consecutive failures" not in str(e):
            raise
        raise ValueError(f"tfmm tune stopped after {tuner.oracle.max_consecutive_failed_trials} failed trials "
                         f"in a row; the last error: {records.last_line(str(e))}") from None
    finally:
        kt_config.DEBUG = debug


def _write_results(tuner, tuner_mod, base: RunConfig, space: SearchSpace, output_dir: str, cache_dir: str) -> tuple:
    """Writes ``trials.csv`` and ``best_config.yaml`` (the best trial's trained config, with
    the ``cache_dir`` the user gave); ``(best config, best trial id, rows)``."""
    oracle = tuner.oracle
    rows = []
    for trial_id in sorted(oracle.trials, key=int):
        trial = oracle.trials[trial_id]
        run_dir = os.path.join(output_dir, TRIALS_DIR, trial_id)
        error = records.last_line(trial.message) if trial.status == "FAILED" else ""
        rows.append(records.trial_row(trial, base, space.names, oracle.objective.name, run_dir,
                                      tuner_mod.read_trial_record(run_dir), error))
    records.write_trials_csv(rows, os.path.join(output_dir, TRIALS_CSV))
    best = tuner_mod.best_trials(oracle)
    if not best:
        errors = sorted({r["error"] for r in rows if r["error"]})
        raise ValueError(f"no trial of the search in {output_dir} completed; errors: {errors}")
    best_id = best[0].trial_id
    trained = load_config(os.path.join(output_dir, TRIALS_DIR, best_id, CONFIG_FILE))
    best_config = trained.replace(train={"cache_dir": cache_dir})
    save_config(best_config, os.path.join(output_dir, BEST_CONFIG_FILE))
    return best_config, best_id, rows


def tune(config: RunConfig, train_data, val_data, output_dir: str = "tfmm_tune", *, trials: int = 10,
         **kwargs) -> RunConfig:
    """Searches hyperparameters with KerasTuner, one tfmm training run per trial.

    Args:
        config: the base run config (every trial starts from it; its seed seeds the search).
        train_data / val_data: training and validation manifests (paths, DataFrames or
            :class:`~tfmm.data.manifest.Manifest`); the objective is measured on ``val_data``.
        output_dir: where trials, KerasTuner's records, ``trials.csv`` and
            ``best_config.yaml`` go; a rerun with the same folder continues the search.
        trials: number of trials (KerasTuner's ``max_trials``).
        **kwargs: ``space`` (a :class:`~tfmm.tuning.space.SearchSpace`; default:
            :func:`~tfmm.tuning.space.default_space`), ``objective`` (``val_loss``,
            ``val_accuracy``, ``NAME:max``), ``algorithm`` (``random`` or ``bayesian``),
            ``overwrite``, ``verbose`` (see :func:`search`).

    Returns:
        The best trial's :class:`~tfmm.config.RunConfig` (also written to
        ``output_dir/best_config.yaml``).

    Raises:
        ImportError: KerasTuner is missing (install ``tfmm[tune]``).
        ValueError: see :func:`search`.

    Example:
        >>> best = tfmm.tune(config, "data/train.csv", "data/val.csv", "tune/products", trials=20)
        >>> tfmm.train(best, "data/train.csv", "data/val.csv", "runs/best")
    """
    return search(config, train_data, val_data, output_dir, trials=trials, **kwargs).best_config
