"""Presets (tfmm.training.presets) and two-stage training (tfmm.training.stages)."""

import json
import os

import keras
import numpy as np
import pytest

from tests.conftest import make_tiny_config
from tfmm.cli_flags import config_from_args
from tfmm.cli_parser import build_parser
from tfmm.config import RunConfig, load_config
from tfmm.models import head_ensemble
from tfmm.training import presets, resume, stages
from tfmm.training.train import train


def _resolved(**sections):
    return presets.resolve_preset(RunConfig().replace(**sections))


# --- resolution (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize("preset, frozen, blocks, two_stage, members, lr, scale, epochs, augment, feature_dropout", [
    ("none", (False, False), (0, 0), False, 1, None, 0.1, None, "none", 0.0),
    ("fast", (True, True), (0, 0), False, 1, None, 0.1, None, "none", presets.FEATURE_DROPOUT),
    ("balanced", (True, False), (0, presets.BALANCED_TEXT_LAYERS), True, presets.ENSEMBLE_HEADS,
     presets.BALANCED_LEARNING_RATE, presets.BALANCED_ENCODER_LR_SCALE, presets.BALANCED_EPOCHS, "none",
     presets.FEATURE_DROPOUT),
    ("best", (False, False), (presets.BEST_BLOCKS,) * 2, True, presets.ENSEMBLE_HEADS, presets.BALANCED_LEARNING_RATE,
     0.1, presets.BEST_EPOCHS, "light", presets.FEATURE_DROPOUT),
])
def test_each_preset_resolves_to_its_table(preset, frozen, blocks, two_stage, members, lr, scale, epochs, augment,
                                           feature_dropout):
    cfg = _resolved(train={"preset": preset})
    mc, tc = cfg.model, cfg.train
    assert (mc.freeze_image, mc.freeze_text) == frozen
    assert (mc.unfreeze_image_blocks, mc.unfreeze_text_layers) == blocks
    assert (tc.two_stage, tc.head_seeds, mc.head_ensemble, tc.learning_rate, tc.epochs, mc.augment) == (
        two_stage, 1, members, lr, epochs, augment)
    assert (mc.feature_dropout, tc.encoder_lr_scale) == (feature_dropout, scale)
    assert presets.resolve_preset(cfg) == cfg  # idempotent


def test_head_seeds_and_head_ensemble_exclude_each_other():
    seeds = _resolved(train={"preset": "balanced", "head_seeds": 3})  # the best of 3: no ensemble
    assert (seeds.train.head_seeds, seeds.model.head_ensemble) == (3, 1)
    with pytest.raises(ValueError, match="head_seeds=3 .* and head_ensemble=2 .* exclude each other"):
        _resolved(train={"preset": "balanced", "head_seeds": 3}, model={"head_ensemble": 2})
    # Scores that cannot be averaged: the preset leaves the head single; asked for explicitly, refused.
    assert _resolved(train={"preset": "balanced"}, model={"task": "contrastive"}).model.head_ensemble == 1
    assert _resolved(train={"preset": "best"}, model={"encoder": "clip:x"}).model.head_ensemble == 1
    with pytest.raises(ValueError, match="feature_dropout must be in \\[0, 1\\); received 1.0"):
        RunConfig().replace(model={"feature_dropout": 1.0})
    with pytest.raises(ValueError, match="head_ensemble must be > 0; received 0"):
        RunConfig().replace(model={"head_ensemble": 0})


def test_no_preset_keeps_todays_defaults():
    cfg = _resolved()
    assert cfg.train.preset == "none"
    assert (cfg.model.freeze_image, cfg.model.unfreeze_image_blocks, cfg.train.two_stage) == (False, 0, False)
    assert cfg.model.dropout == RunConfig().model.dropout and cfg.model.augment == "none"


def test_explicit_values_win_over_the_preset():
    cfg = _resolved(train={"preset": "balanced", "epochs": 2, "learning_rate": 5e-5, "two_stage": False},
                    model={"unfreeze_image_blocks": 3, "augment": "strong"})
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.train.two_stage) == (2, 5e-5, False)
    assert (cfg.model.unfreeze_image_blocks, cfg.model.unfreeze_text_layers) == (3, presets.BALANCED_TEXT_LAYERS)
    assert cfg.model.freeze_image is False  # top image blocks asked for: that encoder is not frozen whole
    assert _resolved(train={"preset": "balanced", "encoder_lr_scale": 0.5}).train.encoder_lr_scale == 0.5
    assert _resolved(train={"preset": "best"}, model={"augment": "strong"}).model.augment == "strong"
    assert _resolved(train={"preset": "best", "head_seeds": 1}).train.head_seeds == 1
    assert _resolved(train={"preset": "fast"}, model={"feature_dropout": 0.0}).model.feature_dropout == 0.0


def test_an_explicit_freeze_wins_over_the_presets_unfrozen_blocks_and_back():
    frozen = _resolved(train={"preset": "best"}, model={"freeze_image": True})
    assert (frozen.model.freeze_image, frozen.model.unfreeze_image_blocks) == (True, 0)
    assert (frozen.model.freeze_text, frozen.model.unfreeze_text_layers) == (False, presets.BEST_BLOCKS)
    text_frozen = _resolved(train={"preset": "balanced"}, model={"freeze_text": True})
    assert (text_frozen.model.freeze_text, text_frozen.model.unfreeze_text_layers) == (True, 0)
    partial = _resolved(train={"preset": "fast"}, model={"unfreeze_text_layers": 2})
    assert (partial.model.freeze_text, partial.model.unfreeze_text_layers) == (False, 2)
    assert (partial.model.freeze_image, partial.model.unfreeze_image_blocks) == (True, 0)


def test_head_seeds_without_two_stage_is_refused():
    with pytest.raises(ValueError, match="head_seeds=3 needs two_stage.*received two_stage=False"):
        _resolved(train={"preset": "fast", "head_seeds": 3})


def test_unknown_preset_and_bad_head_seeds_are_named():
    with pytest.raises(ValueError, match=r"preset must be one of \['balanced', 'best', 'fast', 'none'\]; received 'quick'"):
        RunConfig().replace(train={"preset": "quick"})
    with pytest.raises(ValueError, match="head_seeds must be > 0; received 0"):
        RunConfig().replace(train={"head_seeds": 0})


def test_resolved_config_yaml_round_trip_resolves_to_itself(tmp_path):
    from tfmm.config import save_config

    cfg = _resolved(train={"preset": "best"})
    save_config(cfg, str(tmp_path / "config.yaml"))
    loaded = load_config(str(tmp_path / "config.yaml"))
    assert loaded == cfg and presets.resolve_preset(loaded) == cfg


def test_stage1_config_is_fast_with_the_heads_defaults():
    cfg = _resolved(train={"preset": "best", "seed": 7})
    s1 = presets.resolve_preset(presets.stage1_config(cfg, seed=9))
    assert (s1.model.freeze_image, s1.model.freeze_text, s1.model.unfreeze_image_blocks) == (True, True, 0)
    assert (s1.model.augment, s1.train.preset, s1.train.two_stage, s1.train.seed) == ("none", "fast", False, 9)
    assert (s1.train.learning_rate, s1.train.epochs) == (None, None)  # resolve_train_defaults: 1e-3, 50
    assert s1.model.fusion == cfg.model.fusion and s1.data == cfg.data


def test_cli_preset_and_flags_reach_the_config():
    args = build_parser().parse_args(["train", "--data", "x.csv", "--output-dir", "r", "--preset", "balanced", "--no-freeze-image",
                              "--head-seeds", "2", "--unfreeze-text-layers", "0"])
    cfg = presets.resolve_preset(config_from_args(args))
    assert (cfg.train.preset, cfg.train.head_seeds, cfg.train.two_stage) == ("balanced", 2, True)
    assert (cfg.model.freeze_image, cfg.model.unfreeze_text_layers) == (False, 0)


# --- one tiny two-stage run -----------------------------------------------------------------

class _StartWeights(keras.callbacks.Callback):
    """Each ``fit``'s model weights at its start and at its end (after early stopping's restore,
    before stage 2's guard: user callbacks run before it), per top-level layer."""

    def __init__(self):
        super().__init__()
        self.starts, self.ends = [], []
        self.full_model = None  # set by training on cached features: the model its trainer shares layers with

    def _weights(self):
        model = self.full_model or self.model
        return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers}

    def on_train_begin(self, logs=None):
        self.starts.append(self._weights())

    def on_train_end(self, logs=None):
        self.ends.append(self._weights())


def _backbone_weights(model, encoder):
    backbone = next(lay for lay in model.get_layer(encoder).layers if isinstance(lay, keras.Model))
    return {lay.name: [np.array(w) for w in lay.get_weights()] for lay in backbone.layers if lay.weights}


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def two_stage_run(tiny_bert, demo_data, tmp_path_factory):
    # balanced with a 2-member ensemble head (the preset's 5, made cheaper): two stage-1 runs; the
    # tiny BERT has one layer (the preset trains the top 2) and the views are 1 (the preset's 4).
    cfg = make_tiny_config(tiny_bert).replace(train={"preset": "balanced", "early_stopping_patience": 1,
                                                     "feature_views": 1},
                                              model={"head_ensemble": 2, "unfreeze_text_layers": 1})
    run_dir = str(tmp_path_factory.mktemp("runs") / "balanced")
    recorder = _StartWeights()
    result = train(cfg, demo_data["train"], demo_data["val"], run_dir, callbacks=[recorder], verbose=0)
    stage1 = [keras.models.load_model(os.path.join(run_dir, d, "model.keras"), compile=False)
              for d in ("stage1", "stage1_seed43")]
    return {"run_dir": run_dir, "result": result, "starts": recorder.starts, "ends": recorder.ends,
            "stage1": stage1}


@pytest.mark.slow
def test_two_stage_run_starts_stage2_from_stage1(two_stage_run, demo_data):
    run_dir, stage1, final = two_stage_run["run_dir"], two_stage_run["stage1"], two_stage_run["result"].model
    for d in ("stage1", "stage1_seed43"):
        s1_cfg = load_config(os.path.join(run_dir, d, "config.yaml"))
        assert (s1_cfg.train.preset, s1_cfg.model.freeze_image, s1_cfg.model.freeze_text) == ("fast", True, True)
        assert s1_cfg.model.head_ensemble == 1 and s1_cfg.model.feature_dropout == presets.FEATURE_DROPOUT
        assert resume.read_state(os.path.join(run_dir, d))["status"] == "finished"
    with open(os.path.join(run_dir, stages.STAGES_FILE), encoding="utf-8") as f:
        record = json.load(f)
    assert record["stage2_from"] == ["stage1", "stage1_seed43"]
    # Stage 2's fit begins with stage 1's final weights: the encoders (frozen in stage 1, the same in
    # both runs) and each ensemble member from its own stage-1 run's head.
    start = two_stage_run["starts"][-1]
    for layer in stage1[0].layers:
        if layer.weights and layer.name != "fusion_head":
            assert _same(start[layer.name], layer.get_weights()), layer.name
    members = head_ensemble.members(final.get_layer("fusion_head"))
    offset = 0
    for member, single in zip(members, stage1):
        n = len(member.get_weights())
        assert _same(start["fusion_head"][offset:offset + n], single.get_layer("fusion_head").get_weights())
        offset += n
    assert not _same(stage1[0].get_layer("fusion_head").get_weights(), stage1[1].get_layer("fusion_head").get_weights())
    # Stage 2 trains only the text encoder's top layer (the image encoder stays frozen, its features
    # and their views cached): the rest is stage 1's.
    trained = two_stage_run["ends"][-1]
    assert _same([np.array(w) for w in final.get_layer("image_encoder").get_weights()], trained["image_encoder"])
    assert _same(trained["image_encoder"], [np.array(w) for w in stage1[0].get_layer("image_encoder").get_weights()])
    for encoder, top in (("text_encoder", "transformer_layer_0"),):
        before = _backbone_weights(stage1[0], encoder)
        final_encoder = final.get_layer(encoder)
        saved = [np.array(w) for w in final_encoder.get_weights()]
        final_encoder.set_weights(trained[encoder])  # the weights stage 2's epochs ended with
        after = _backbone_weights(final, encoder)
        final_encoder.set_weights(saved)
        changed = {name for name in after if not _same(before[name], after[name])}
        assert changed and all(name.startswith(top) for name in changed), (encoder, changed)
    # The run keeps stage 2's weights only when an epoch improved stage 1's validation loss.
    guard = record["stage2"]
    assert guard["kept"] == ("stage2" if guard["best_val_loss"] < guard["start_val_loss"] else "stage1")
    kept = start if guard["kept"] == "stage1" else trained
    for layer in final.layers:
        if layer.weights:
            assert _same(kept[layer.name], layer.get_weights()), layer.name


@pytest.mark.slow
def test_two_stage_run_config_evaluates_and_exports(two_stage_run, demo_data, tmp_path):
    import tfmm
    from tfmm.serving.export import export_for_serving

    run_dir = two_stage_run["run_dir"]
    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    assert (cfg.train.two_stage, cfg.model.unfreeze_image_blocks, cfg.model.freeze_image) == (True, 0, True)
    assert (cfg.model.unfreeze_text_layers, cfg.train.encoder_lr_scale, cfg.train.feature_views) == (
        1, presets.BALANCED_ENCODER_LR_SCALE, 1)
    assert (cfg.train.epochs, cfg.train.learning_rate) == (1, 1e-3)  # the tiny config's, given explicitly
    assert presets.resolve_preset(cfg) == cfg
    metrics = tfmm.evaluate(run_dir, demo_data["test"])
    assert metrics["n_examples"] == 18 and 0.0 <= metrics["accuracy"] <= 1.0
    exported = export_for_serving(run_dir, str(tmp_path / "export"), check=False)
    assert os.path.exists(os.path.join(exported.path, "saved_model.pb"))


def _fake_train_one(calls):
    """A stand-in for one ordinary run: records its call, writes a finished run's state and history."""
    def train_one(config, run_dir, *, overwrite=False, initial_model=None, **kwargs):
        state = resume.read_state(run_dir)
        if state and state.get("status") == "finished" and not overwrite:
            raise resume.RunFinishedError(f"{run_dir} already holds a finished run")
        calls.append((os.path.basename(run_dir), config.train.seed, initial_model))
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "history.json"), "w", encoding="utf-8") as f:
            json.dump({"loss": [1.0], "val_loss": [abs(config.train.seed - 43) + 0.5]}, f)
        with open(os.path.join(run_dir, resume.STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"status": "finished"}, f)
        return config
    return train_one


def test_two_stage_picks_the_best_head_seed_and_resumes_after_stage1(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "load_stage1_model", lambda path: os.path.basename(path))
    cfg = _resolved(train={"preset": "best", "seed": 42, "head_seeds": 3})  # 42, 43, 44: 43 has the lowest val loss
    run_dir, calls = str(tmp_path / "run"), []
    stages.train_two_stage(cfg, run_dir, _fake_train_one(calls))
    assert calls == [("stage1", 42, None), ("stage1_seed43", 43, None), ("stage1_seed44", 44, None),
                     ("run", 42, "stage1_seed43")]
    with open(os.path.join(run_dir, stages.STAGES_FILE), encoding="utf-8") as f:
        record = json.load(f)
    assert record["stage1_winner_seed"] == 43 and record["stage1"]["44"]["best_loss"] == 1.5
    with pytest.raises(resume.RunFinishedError):  # a finished run: nothing is trained again
        stages.train_two_stage(cfg, run_dir, _fake_train_one(calls))
    os.remove(os.path.join(run_dir, resume.STATE_FILE))  # stage 2 crashed: stage 1 is kept
    calls.clear()
    stages.train_two_stage(cfg, run_dir, _fake_train_one(calls))
    assert calls == [("run", 42, "stage1_seed43")]
    calls.clear()
    stages.train_two_stage(cfg, run_dir, _fake_train_one(calls), overwrite=True)
    assert [c[0] for c in calls] == ["stage1", "stage1_seed43", "stage1_seed44", "run"]


def test_two_stage_ensemble_starts_stage2_from_every_member(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "load_stage1_model", lambda path: os.path.basename(path))
    cfg = _resolved(train={"preset": "balanced", "seed": 42}, model={"head_ensemble": 3})
    run_dir, calls = str(tmp_path / "run"), []
    stages.train_two_stage(cfg, run_dir, _fake_train_one(calls))
    members = ["stage1", "stage1_seed43", "stage1_seed44"]
    assert calls == [("stage1", 42, None), ("stage1_seed43", 43, None), ("stage1_seed44", 44, None),
                     ("run", 42, members)]  # every member, in seed order, not only the lowest-loss one
    with open(os.path.join(run_dir, stages.STAGES_FILE), encoding="utf-8") as f:
        record = json.load(f)
    assert record["stage2_from"] == members and record["stage1_winner_seed"] is None


@pytest.mark.parametrize("flip, kept", [(True, "stage1"), (False, "stage2")])
def test_stage2_keeps_its_starting_weights_unless_an_epoch_improves_on_them(tmp_path, flip, kept):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], "float32") > 0).astype("float32")[:, None]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    start = [np.array(w) for w in model.get_weights()]
    record = tmp_path / "stages.json"
    record.write_text(json.dumps({"stage2_from": "stage1"}))
    guard = stages.KeepStartingWeights(model, (x, y), str(record))
    y_fit = 1 - y if flip else y  # flipped labels: every epoch moves away from the validation targets
    history = model.fit(x, y_fit, validation_data=(x, y), epochs=3, batch_size=16, verbose=0, callbacks=[guard])
    saved = json.loads(record.read_text())
    assert saved["stage2_from"] == "stage1" and saved["stage2"]["kept"] == kept
    assert saved["stage2"]["best_val_loss"] == pytest.approx(min(history.history["val_loss"]))
    p = 1 / (1 + np.exp(-(x @ start[0] + start[1])))  # the starting weights' loss, by hand
    start_loss = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    assert saved["stage2"]["start_val_loss"] == pytest.approx(start_loss, rel=1e-4)
    if kept == "stage1":  # every epoch worse than the start: the start's weights are back
        assert min(history.history["val_loss"]) >= guard.start_loss
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start))
    else:
        assert min(history.history["val_loss"]) < guard.start_loss
        assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start))
