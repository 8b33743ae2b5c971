"""train(): one fit step changes weights; the run directory rebuilds the model."""

import json
import os

import keras
import numpy as np
import pytest

from tfmm.config import load_config
from tfmm.data.manifest import build_label_vocab, load_labels, read_manifest
from tfmm.data.pipeline import make_dataset
from tfmm.data.validation import ManifestError
from tfmm.tasks import build_model
from tfmm.run_dir import load_run
from tfmm.training.train import compile_model, make_optimizer, train


@pytest.mark.slow
def test_one_fit_step_changes_weights(tiny_config, demo_data):
    cfg = tiny_config.replace(model={"num_classes": 9})
    model = build_model(cfg)
    compile_model(model, cfg, steps_per_epoch=1)
    from tfmm.models.text import load_text_preprocessor

    m = read_manifest(demo_data["train"])
    ds = make_dataset(m, config=cfg.data, preprocessor=load_text_preprocessor(cfg.model.text_encoder, 8),
                             labels=build_label_vocab(m), batch_size=8).take(1)
    parts = ("image_encoder", "text_encoder", "fusion_head")
    before = {part: [w.numpy().copy() for w in model.get_layer(part).trainable_weights] for part in parts}
    model.fit(ds, epochs=1, verbose=0, shuffle=False)  # ds is a Dataset: Keras cannot shuffle it
    for part in parts:
        after = [w.numpy() for w in model.get_layer(part).trainable_weights]
        changed = sum(not np.array_equal(a, b) for a, b in zip(before[part], after))
        assert changed > 0.5 * len(after), (part, changed, len(after))


def test_learning_rate_schedule_warms_up_then_decays(tiny_config):
    cfg = tiny_config.replace(train={"epochs": 10, "learning_rate": 1e-3, "warmup_fraction": 0.1})
    schedule = make_optimizer(cfg, steps_per_epoch=10)._learning_rate
    values = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 50, 100)]
    assert values[0] == 0.0 and values[1] == pytest.approx(5e-4) and values[2] == pytest.approx(1e-3)
    assert values[2] > values[3] > values[4]


@pytest.mark.slow
def test_train_writes_run_dir_and_reloads(tiny_config, demo_data, tmp_path):
    run_dir = str(tmp_path / "run")
    result = train(tiny_config.replace(train={"epochs": 2}), demo_data["train"], demo_data["val"], run_dir)
    for name in ("config.yaml", "labels.txt", "model.keras", "history.json", "history.csv",
                 "checkpoints/best.weights.h5", "tokenizer/vocab.txt"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.listdir(os.path.join(run_dir, "logs"))
    assert load_config(os.path.join(run_dir, "config.yaml")).model.num_classes == 9
    assert len(json.load(open(os.path.join(run_dir, "history.json")))["val_loss"]) == 2
    assert result.labels == load_labels(os.path.join(run_dir, "labels.txt"))
    run = load_run(run_dir)
    manifest = read_manifest(demo_data["test"])
    fresh = result.model.predict(run.dataset(manifest), verbose=0)
    np.testing.assert_allclose(run.predict_scores(manifest), fresh, atol=1e-5)


@pytest.mark.slow
def test_bad_rows_stop_training_before_fit(tiny_config, demo_data, tmp_path):
    import pandas as pd

    df = pd.read_csv(demo_data["train"])
    df.loc[3, "image"] = "images/missing.png"
    df.loc[5, "text"] = ""
    bad = os.path.join(os.path.dirname(demo_data["train"]), "bad_train.csv")
    df.to_csv(bad, index=False)
    with pytest.raises(ManifestError) as e:
        train(tiny_config, bad, None, str(tmp_path / "r"))
    assert "row 3: " in str(e.value) and "file not found" in str(e.value)
    assert "row 5: " in str(e.value) and "empty text" in str(e.value)
    assert not os.path.exists(str(tmp_path / "r" / "model.keras"))
    result = train(tiny_config.replace(data={"skip_bad_rows": True}), bad, None, str(tmp_path / "r2"))
    skipped = pd.read_csv(os.path.join(result.run_dir, "skipped_rows.csv"))
    assert skipped["row"].tolist() == [3, 5]
