"""build_model: structure, inputs, parts usable alone, save/load."""

import keras
import numpy as np
import pytest

from tfmm.tasks import build_model


def _inputs(n=2, size=32, length=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(0, 255, (n, size, size, 3)).astype("float32"),
        "token_ids": rng.integers(5, 20, (n, length)).astype("int32"),
        "segment_ids": np.zeros((n, length), "int32"),
        "padding_mask": np.ones((n, length), "int32"),
    }


@pytest.mark.parametrize("task, classes, units", [("classification", 3, 3), ("binary", 2, 1), ("multilabel", 4, 4)])
def test_fused_model_outputs(tiny_config, task, classes, units):
    model = build_model(tiny_config.replace(model={"task": task, "num_classes": classes}))
    assert sorted(model.input) == ["image", "padding_mask", "segment_ids", "token_ids"]
    scores = model.predict(_inputs(), verbose=0)
    assert scores.shape == (2, units)
    if task == "classification":
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    else:
        assert ((scores > 0) & (scores < 1)).all()


def test_parts_run_alone_and_compose(tiny_config):
    model = build_model(tiny_config.replace(model={"num_classes": 3, "dropout": 0.0}))
    x = _inputs()
    image_feats = model.get_layer("image_encoder").predict(x["image"], verbose=0)
    text_feats = model.get_layer("text_encoder").predict(
        {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}, verbose=0)
    head = model.get_layer("fusion_head")
    composed = head.predict({"image_features": image_feats, "text_features": text_feats}, verbose=0)
    np.testing.assert_allclose(composed, model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("modalities, inputs", [("image", ["image"]), ("text", ["padding_mask", "segment_ids", "token_ids"])])
def test_single_modality_models(tiny_config, modalities, inputs):
    model = build_model(tiny_config.replace(model={"num_classes": 3, "modalities": modalities}))
    assert sorted(model.input) == inputs
    x = {k: v for k, v in _inputs().items() if k in inputs}
    assert model.predict(x, verbose=0).shape == (2, 3)


@pytest.mark.parametrize("fusion", ["sum", "gated"])
def test_freeze_flags_and_save_load(tiny_config, tmp_path, fusion):
    cfg = tiny_config.replace(model={"num_classes": 3, "freeze_image": True, "freeze_text": True, "fusion": fusion})
    model = build_model(cfg)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert model.get_layer("image_encoder").trainable_weights == []
    assert model.get_layer("text_encoder").trainable_weights == []
    assert model.trainable_weights and all("fusion_head" in w.path or "projection" in w.path or "scores" in w.path
                                          or "head" in w.path or "fusion" in w.path for w in model.trainable_weights), trainable
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _inputs()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_num_classes_required(tiny_config):
    with pytest.raises(ValueError, match="model.num_classes must be set"):
        build_model(tiny_config)
    with pytest.raises(ValueError, match="task 'binary' needs exactly 2 labels; received 3"):
        build_model(tiny_config.replace(model={"task": "binary", "num_classes": 3}))


def test_text_dtype_and_lora_rank_reach_the_text_backbone(tiny_config):
    config = tiny_config.replace(model={"num_classes": 3, "modalities": "text", "text_dtype": "bfloat16",
                                        "text_lora_rank": 2})
    model = build_model(config)
    encoder = model.get_layer("text_encoder")
    dtypes = {layer.dtype_policy.name for layer in encoder._flatten_layers() if "backbone" in layer.name}
    assert dtypes == {"bfloat16"}, dtypes
    encoder_trainable = [w.path for w in encoder.trainable_weights]
    assert sum("lora_kernel" in p for p in encoder_trainable) == 4  # query and value: kernels a and b
    assert all("lora_kernel" in p or p.endswith("/bias") for p in encoder_trainable), encoder_trainable
