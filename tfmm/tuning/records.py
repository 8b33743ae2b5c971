"""What a search leaves behind: ``trials.csv``, the printed table and the retrain command.

One row per trial: ``trial``, ``status`` (COMPLETED, FAILED, RUNNING), each searched field's
value as the trial's run config has it, the objective at the run's best epoch, that epoch,
the trial's seconds, its run directory and, for a failed trial, the error.
"""

from __future__ import annotations

import csv
import os
import shlex
from typing import Optional, Sequence

from tfmm.config import RunConfig
from tfmm.files import atomic_write
from tfmm.tuning.space import FIELDS, apply_values


def trial_row(trial, base_config: RunConfig, names: Sequence[str], objective: str, run_dir: str,
              record: dict, error: str = "") -> dict:
    """The ``trials.csv`` row of one KerasTuner trial (``record``: the trial run's summary file)."""
    config = apply_values(base_config, trial.hyperparameters.values)
    row = {"trial": trial.trial_id, "status": trial.status}
    for name in names:
        section, field = FIELDS[name]
        row[name] = getattr(getattr(config, section), field)
    done = trial.status == "COMPLETED"
    row[objective] = trial.score if done else None
    row["best_epoch"] = record.get("best_epoch") if done else None
    row["seconds"] = record.get("seconds")
    row["run_dir"] = run_dir
    row["error"] = error
    return row


def write_trials_csv(rows: list, path: str) -> None:
    """Writes the rows (atomically) with a header; empty cells for missing values."""
    if not rows:
        return
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list, best_trial: Optional[str]) -> str:
    """A plain-text table of the rows (without run dirs and errors); the best trial marked ``*``."""
    keys = [k for k in (rows[0] if rows else {}) if k not in ("run_dir", "error")]
    cells = [[_cell(r[k]) + (" *" if k == "trial" and r["trial"] == best_trial else "") for k in keys]
             for r in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def retrain_command(best_config_path: str, train_data, val_data, cache_dir: str = "") -> str:
    """The ``tfmm train`` command line that retrains the best config (placeholders for data
    that was not given as a path)."""
    def path(data, placeholder):
        return os.fspath(data) if isinstance(data, (str, os.PathLike)) else placeholder

    parts = ["tfmm", "train", "--config", best_config_path, "--data", path(train_data, "TRAIN"),
             "--val-data", path(val_data, "VAL"), "--output-dir", "RUN"]
    if cache_dir and os.path.isdir(cache_dir):
        parts += ["--cache-dir", cache_dir]  # the search's encoder features: not computed again
    return " ".join(shlex.quote(p) if p != "RUN" else p for p in parts)


def last_line(message) -> str:
    """The last line of a failed trial's traceback (the error), without KerasTuner's wrapper."""
    lines = (message or "").strip().splitlines()
    text = lines[-1] if lines else ""
    prefix = "FailedTrialError: "
    return text[text.index(prefix) + len(prefix):] if prefix in text else text
