"""`tfmm tune`: the search space, the KerasTuner tuner and its records, and one end-to-end
search (3 trials on frozen tiny encoders, features cached once) whose best config retrains."""

import contextlib
import io
import json
import logging
import os
import shlex
import sys

import pandas as pd
import pytest

import tfmm
from tfmm import cli
from tfmm.cli_parser import build_parser
from tfmm.config import FUSIONS, RunConfig, load_config
from tfmm.tuning import SearchSpace, build_space, default_space, records
from tfmm.tuning.space import FIELDS, apply_values, to_hyperparameters

FROZEN = RunConfig().replace(model={"freeze_image": True, "freeze_text": True})


# --- the search space -------------------------------------------------------------------------

def test_default_space_frozen_encoders_searches_head_fields_only():
    space = default_space(FROZEN)
    assert space.learning_rate == (1e-4, 1e-2)
    assert space.fusion == FUSIONS
    assert space.searched == ["learning_rate", "dropout", "fusion", "projection_dim"]


def test_default_space_trained_encoders_adds_unfrozen_depth_and_fine_tune_rates():
    space = default_space(RunConfig())
    assert space.learning_rate == (1e-5, 1e-3)
    assert space.unfreeze_image_blocks == (0, 1, 2) and space.unfreeze_text_layers == (0, 1, 2)
    image_only = default_space(RunConfig().replace(model={"modalities": "image", "freeze_image": True}))
    assert image_only.fusion == () and "fusion" not in image_only.searched
    bag = default_space(RunConfig().replace(model={"text_encoder": "embedding-bag", "freeze_image": True}))
    assert bag.unfreeze_text_layers == ()  # no blocks to split


def test_build_space_given_flags_fix_fields_and_options_replace_them():
    config = FROZEN.replace(model={"fusion": "gated", "dropout": 0.3})
    space = build_space(config, fixed=["fusion", "dropout", "learning_rate"], fusion=("concat", "sum"),
                        projection_dim=(16,))
    assert space.fusion == ("concat", "sum")  # an explicit option wins over the given flag
    assert space.dropout == (0.3, 0.3)
    assert space.learning_rate == (1e-4, 1e-2)  # the base config leaves it to its default: searched
    assert space.searched == ["learning_rate", "fusion"]
    hp = to_hyperparameters(space)
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds == {"learning_rate": "Float", "dropout": "Fixed", "fusion": "Choice", "projection_dim": "Fixed"}
    assert [p for p in hp.space if p.name == "learning_rate"][0].sampling == "log"


@pytest.mark.parametrize("fields, message", [
    ({"fusion": ("concat", "cat")}, "fusion choices must be in"),
    ({"learning_rate": (1e-3, 1e-4)}, "learning_rate range must be"),
    ({"dropout": (0.2, 1.0)}, "dropout range must lie in [0, 1)"),
    ({"projection_dim": (0, 8)}, "projection_dim choices must be integers >= 1"),
])
def test_search_space_rejects_bad_values_naming_them(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        SearchSpace(**fields)


def test_apply_values_sets_fields_and_unfreezes_a_frozen_encoder_only_for_depth_above_zero():
    config = apply_values(FROZEN, {"unfreeze_image_blocks": 2, "unfreeze_text_layers": 0,
                                   "dropout": 0.30000000000000004, "learning_rate": 3e-4, "fusion": "sum"})
    mc = config.model
    assert (mc.freeze_image, mc.unfreeze_image_blocks) == (False, 2)
    assert (mc.freeze_text, mc.unfreeze_text_layers) == (True, FROZEN.model.unfreeze_text_layers)  # kept
    assert (mc.dropout, mc.fusion, config.train.learning_rate) == (0.3, "sum", 3e-4)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['hidden_dim'\]"):
        apply_values(FROZEN, {"hidden_dim": 8})


# --- objective, records, errors before any training ------------------------------------------

def test_objective_direction_and_best_epoch():
    from tfmm.tuning.runner import parse_objective
    from tfmm.tuning.tuner import best_epoch

    assert parse_objective("val_loss").direction == "min"
    assert parse_objective("val_accuracy").direction == "max"
    assert parse_objective("val_f1:min").direction == "min"
    history = {"val_loss": [0.9, 0.5, 0.7], "val_accuracy": [0.5, 0.6, 0.8]}
    assert best_epoch(history, parse_objective("val_loss")) == (1, {"val_loss": 0.5, "val_accuracy": 0.6})
    assert best_epoch(history, parse_objective("val_accuracy"))[0] == 2
    with pytest.raises(ValueError, match=r"'val_auc' is not in the run's history; it has \['val_accuracy', 'val_loss'\]"):
        best_epoch(history, parse_objective("val_auc"))


def test_table_marks_best_and_retrain_command_reuses_the_cache(tmp_path):
    rows = [{"trial": "0", "status": "COMPLETED", "fusion": "sum", "val_loss": 0.61234, "run_dir": "x", "error": ""},
            {"trial": "1", "status": "FAILED", "fusion": "gated", "val_loss": None, "run_dir": "y", "error": "boom"}]
    table = records.format_table(rows, "0").splitlines()
    assert table[0].split() == ["trial", "status", "fusion", "val_loss"]
    assert table[1].split() == ["0", "*", "COMPLETED", "sum", "0.6123"]
    assert table[2].split() == ["1", "FAILED", "gated", "-"]
    command = records.retrain_command("t/best config.yaml", "train.csv", pd.DataFrame(), str(tmp_path))
    assert command == (f"tfmm train --config 't/best config.yaml' --data train.csv --val-data VAL "
                       f"--output-dir RUN --cache-dir {tmp_path}")
    assert records.last_line("Traceback...\nkeras_tuner.src.errors.FailedTrialError: ValueError: bad") == "ValueError: bad"


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_data=None), "needs validation data"),
    (dict(trials=0), "trials must be an integer >= 1"),
    (dict(algorithm="grid"), r"algorithm must be one of \['random', 'bayesian'\]; received 'grid'"),
    (dict(space=SearchSpace(fusion=("sum",))), "nothing to vary"),
    (dict(objective="val_loss:up"), "objective must be NAME, NAME:min or NAME:max"),
])
def test_search_rejects_bad_arguments_before_training(tmp_path, kwargs, message):
    args = dict(config=FROZEN, train_data="train.csv", val_data="val.csv", output_dir=str(tmp_path / "t"))
    with pytest.raises(ValueError, match=message):
        tfmm.tuning.search(**{**args, **kwargs})
    assert not os.path.exists(tmp_path / "t" / "trials")


def test_missing_keras_tuner_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # `import keras_tuner` raises ImportError
    monkeypatch.delitem(sys.modules, "tfmm.tuning.tuner", raising=False)
    with pytest.raises(ImportError, match=r'pip install "tfmm\[tune\]"'):
        tfmm.tune(FROZEN, "train.csv", "val.csv", str(tmp_path / "t"), trials=2)


def test_tune_help_explains_the_search_space():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["tune"]
    text = sub.format_help()
    for words in ("search space", "log-uniform", "concat, sum, mean, gated", "unfrozen depth", "best_config.yaml",
                  "--tune-fusions", "--algorithm", "--objective", "--freeze-image"):
        assert words in text
    args = parser.parse_args(["tune", "--data", "a.csv", "--val-data", "b.csv", "--tune-fusions", "concat,gated",
                              "--tune-learning-rate", "1e-4,1e-3", "--tune-projection-dims", "8,16"])
    assert (args.tune_fusions, args.tune_learning_rate, args.tune_projection_dims) == (
        ("concat", "gated"), (1e-4, 1e-3), (8, 16))
    assert args.trials == 10 and args.algorithm == "random" and args.objective == "val_loss"


# --- one search through the CLI (3 trials), its records, its best config retrained ------------

SEARCHED = ["learning_rate", "dropout", "fusion", "projection_dim"]


def _tune_args(tiny_bert, demo_data, out_dir):
    return ["tune", "--data", demo_data["train"], "--val-data", demo_data["val"], "--output-dir", out_dir,
            "--trials", "3", "--preset", "none", "--text-encoder", f"keras_nlp:{tiny_bert}",
            "--image-weights", "none", "--image-size", "32", "--sequence-length", "8", "--hidden-dim", "16",
            "--epochs", "2", "--batch-size", "8", "--freeze-image", "--freeze-text",
            "--tune-projection-dims", "8,16,32"]


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _run_cli(args, logger_name="tfmm.tuning"):
    handler, log = _Lines(), logging.getLogger(logger_name)
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = cli.main(args)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return code, printed.getvalue(), handler.lines


@pytest.fixture(scope="module")
def tuned(tiny_bert, demo_data, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("tune") / "search")
    code, stdout, lines = _run_cli(_tune_args(tiny_bert, demo_data, out_dir))
    assert code == 0, stdout
    return {"dir": out_dir, "stdout": stdout, "log": lines, "rows": pd.read_csv(os.path.join(out_dir, "trials.csv"))}


@pytest.mark.slow
def test_tune_three_trials_records_and_best_config(tuned):
    rows, out_dir = tuned["rows"], tuned["dir"]
    assert len(rows) == 3 and set(rows["status"]) == {"COMPLETED"}
    assert len({tuple(r) for r in rows[SEARCHED].itertuples(index=False)}) == 3  # distinct values
    assert set(rows["projection_dim"]) <= {8, 16, 32} and set(rows["fusion"]) <= set(FUSIONS)
    assert (rows["seconds"] > 0).all() and set(rows["best_epoch"]) <= {1, 2}
    best = rows.loc[rows["val_loss"].idxmin()]
    assert f"best: trial {best['trial']}, val_loss {best['val_loss']:.4f}" in tuned["stdout"]
    best_config = load_config(os.path.join(out_dir, "best_config.yaml"))
    assert best_config.train.learning_rate == best["learning_rate"]
    assert (best_config.model.dropout, best_config.model.fusion, best_config.model.projection_dim) == (
        best["dropout"], best["fusion"], best["projection_dim"])
    trial_config = load_config(os.path.join(best["run_dir"], "config.yaml"))
    assert best_config == trial_config.replace(train={"cache_dir": ""})  # what that trial trained
    with open(os.path.join(best["run_dir"], "history.json")) as f:
        assert min(json.load(f)["val_loss"]) == pytest.approx(best["val_loss"])
    # frozen encoders: features extracted once (image, text x train, val), shared by the trials
    assert len(os.listdir(os.path.join(out_dir, "feature_cache"))) == 4
    assert trial_config.train.cache_dir == os.path.join(out_dir, "feature_cache")
    # KerasTuner's records, and one progress line per trial
    assert sorted(os.listdir(os.path.join(out_dir, "keras_tuner"))) == [
        "oracle.json", "trial_0", "trial_1", "trial_2", "tuner0.json"]
    progress = [line for line in tuned["log"] if line.startswith("trial ")]
    assert [line.split()[1] for line in progress] == ["0", "1", "2"]
    assert all("-> val_loss" in line for line in progress)


@pytest.mark.slow
def test_tune_best_config_retrains_to_the_same_config_and_metric(tuned, tmp_path):
    command = next(line.strip() for line in tuned["stdout"].splitlines() if line.strip().startswith("tfmm train"))
    run_dir = str(tmp_path / "retrained")
    args = [run_dir if a == "RUN" else a for a in shlex.split(command)[1:]]
    code, stdout, _ = _run_cli(args)
    assert code == 0, stdout
    best_config = load_config(os.path.join(tuned["dir"], "best_config.yaml"))
    retrained = load_config(os.path.join(run_dir, "config.yaml"))
    for name in SEARCHED:
        section, field = FIELDS[name]
        assert getattr(getattr(retrained, section), field) == getattr(getattr(best_config, section), field)
    assert retrained.replace(train={"cache_dir": ""}) == best_config
    best = tuned["rows"].loc[tuned["rows"]["val_loss"].idxmin()]
    with open(os.path.join(run_dir, "history.json")) as f:
        val_loss = json.load(f)["val_loss"]
    with open(os.path.join(best["run_dir"], "history.json")) as f:
        trial_val_loss = json.load(f)["val_loss"]
    assert val_loss == pytest.approx(trial_val_loss, abs=1e-5)  # seeded, same cached features: reproducible on CPU


@pytest.mark.slow
def test_tune_rerun_continues_the_finished_search_without_training(tuned, tiny_bert, demo_data):
    before = {t: os.path.getmtime(os.path.join(tuned["dir"], "trials", t, "model.keras")) for t in "012"}
    code, stdout, lines = _run_cli(_tune_args(tiny_bert, demo_data, tuned["dir"]))
    assert code == 0, stdout
    assert any("continuing the search" in line and "3 of 3" in line for line in lines)
    assert {t: os.path.getmtime(os.path.join(tuned["dir"], "trials", t, "model.keras")) for t in "012"} == before
    rows = pd.read_csv(os.path.join(tuned["dir"], "trials.csv"))
    pd.testing.assert_frame_equal(rows, tuned["rows"])
    # a different search in the same folder is refused
    code, _, _ = _run_cli(_tune_args(tiny_bert, demo_data, tuned["dir"])[:-1] + ["8,16"])
    assert code == 2


# --- the search loop with a stand-in for training (no model is built) -------------------------

class _FakeRun:
    def __init__(self, history):
        self.history = history


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces `tfmm.train` for the tuner: writes config.yaml, returns a val_loss made from the
    trial's values (lowest for gated fusion and dropout 0.2); fusion 'sum' fails the trial."""
    from tfmm.config import save_config

    calls = []

    def train(config, train_data, val_data, run_dir, verbose=0):
        calls.append(run_dir)
        if config.model.fusion == "sum":
            raise ValueError("sum needs equal widths")
        os.makedirs(run_dir, exist_ok=True)
        save_config(config, os.path.join(run_dir, "config.yaml"))
        loss = abs(config.model.dropout - 0.2) + (0.0 if config.model.fusion == "gated" else 0.5)
        return _FakeRun({"val_loss": [loss + 0.1, loss], "val_accuracy": [0.5, 1 - loss]})

    monkeypatch.setattr("tfmm.training.train.train", train)
    return calls


@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
def test_search_loop_records_failed_trials_and_picks_the_best(fake_train, tmp_path, algorithm):
    space = SearchSpace(dropout=(0.0, 0.5), fusion=("sum", "gated", "mean"))
    result = tfmm.tuning.search(FROZEN, "train.csv", "val.csv", str(tmp_path / "t"), trials=6, space=space,
                                algorithm=algorithm)
    rows = pd.read_csv(result.trials_csv, keep_default_na=False)
    assert len(rows) == len(fake_train) == 6 and list(rows["trial"]) == list(range(6))
    failed = rows[rows["status"] == "FAILED"]
    assert set(failed["fusion"]) <= {"sum"} and all(failed["error"] == "ValueError: sum needs equal widths")
    done = rows[rows["status"] == "COMPLETED"].astype({"val_loss": float, "best_epoch": int})
    best = done.loc[done["val_loss"].idxmin()]
    assert result.best_trial == str(best["trial"])
    expected = abs(best["dropout"] - 0.2) + (0.0 if best["fusion"] == "gated" else 0.5)
    assert best["val_loss"] == pytest.approx(expected) and best["best_epoch"] == 2
    assert (result.best_config.model.fusion, result.best_config.model.dropout) == (best["fusion"], best["dropout"])
    assert result.best_config.train.cache_dir == ""  # the shared cache is the search's, not the config's
    assert load_config(result.best_config_path) == result.best_config


def test_search_maximizes_a_max_objective_and_stops_on_errors_no_values_avoid(fake_train, tmp_path, monkeypatch):
    space = SearchSpace(dropout=(0.0, 0.5), fusion=("gated",))
    best = tfmm.tune(FROZEN, "train.csv", "val.csv", str(tmp_path / "a"), trials=4, space=space,
                     objective="val_accuracy")
    rows = pd.read_csv(tmp_path / "a" / "trials.csv")
    assert best.model.dropout == rows.loc[rows["val_accuracy"].idxmax(), "dropout"]
    with pytest.raises(ValueError, match="'val_auc' is not in the run's history"):
        tfmm.tune(FROZEN, "train.csv", "val.csv", str(tmp_path / "b"), trials=4, space=space, objective="val_auc")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("tfmm.training.train.train", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        tfmm.tune(FROZEN, "train.csv", "val.csv", str(tmp_path / "c"), trials=4, space=space)


def test_search_stops_after_three_failed_trials_in_a_row_with_the_error(fake_train, tmp_path):
    space = SearchSpace(dropout=(0.0, 0.5), fusion=("sum",))
    with pytest.raises(ValueError, match=r"stopped after 3 failed trials in a row; the last error: "
                                         r"ValueError: sum needs equal widths"):
        tfmm.tune(FROZEN, "train.csv", "val.csv", str(tmp_path / "t"), trials=5, space=space)
    assert len(fake_train) == 3


def test_cli_train_flags_fix_searched_fields_and_tune_options_narrow_the_rest(monkeypatch, tmp_path):
    seen = {}

    def fake_search(config, train_data, val_data, output_dir, **kwargs):
        seen.update(kwargs, config=config)
        row = {"trial": "0", "status": "COMPLETED", "val_loss": 0.5, "run_dir": "r", "error": ""}
        return tfmm.tuning.TuneResult(config, "0", "val_loss", [row], output_dir, "best.yaml", "trials.csv", "")

    monkeypatch.setattr("tfmm.tuning.search", fake_search)
    code, stdout, _ = _run_cli(["tune", "--data", "a.csv", "--val-data", "b.csv", "--output-dir", str(tmp_path),
                                "--freeze-image", "--freeze-text", "--fusion", "gated", "--dropout", "0.25",
                                "--tune-dropout", "0.1,0.3", "--tune-projection-dims", "8,16", "--trials", "4"])
    assert code == 0
    space = seen["space"]
    assert space.fusion == ("gated",) and "fusion" not in space.searched  # --fusion fixes it
    assert space.dropout == (0.1, 0.3)  # --tune-dropout wins over --dropout
    assert space.projection_dim == (8, 16) and space.learning_rate == (1e-4, 1e-2)
    assert (seen["trials"], seen["objective"], seen["algorithm"]) == (4, "val_loss", "random")
    assert "best: trial 0, val_loss 0.5000" in stdout
    assert "tfmm train --config best.yaml --data a.csv --val-data b.csv --output-dir RUN" in stdout
