"""Fusion, image preprocessing and pooling layers: values, shapes and serialization."""

import keras
import numpy as np
import pytest

from tfmm.models import pair_heads
from tfmm.models.freezing import InferenceModeModel
from tfmm.models.fusion import Fusion
from tfmm.models.hub_vision import TokenPooling
from tfmm.models.text import MaskedMeanPooling
from tfmm.models.text_pooling import FirstTokenPooling
from tfmm.models.vision import ImagePreprocess


def _roundtrip_model(layer_fn, inputs, tmp_path):
    model = keras.Model(inputs, layer_fn(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    return model, keras.models.load_model(path)


@pytest.mark.parametrize("mode, expected_dim", [("concat", 8), ("sum", 4), ("mean", 4), ("gated", 4)])
def test_fusion_values_shapes_and_save_load(mode, expected_dim, tmp_path):
    a = np.arange(8, dtype="float32").reshape(2, 4)
    b = np.ones((2, 4), dtype="float32")
    layer = Fusion(mode)
    out = keras.ops.convert_to_numpy(layer([a, b]))
    assert out.shape == (2, expected_dim)
    if mode == "concat":
        np.testing.assert_allclose(out, np.concatenate([a, b], 1))
    elif mode == "sum":
        np.testing.assert_allclose(out, a + b)
    elif mode == "mean":
        np.testing.assert_allclose(out, (a + b) / 2)
    else:  # a convex combination per feature: between the two inputs
        assert np.all(out >= np.minimum(a, b) - 1e-6) and np.all(out <= np.maximum(a, b) + 1e-6)
    clone = Fusion.from_config(layer.get_config())
    assert clone.mode == mode
    inputs = [keras.Input((4,)), keras.Input((4,))]
    model, loaded = _roundtrip_model(Fusion(mode), inputs, tmp_path)
    np.testing.assert_allclose(model.predict([a, b], verbose=0), loaded.predict([a, b], verbose=0), atol=1e-6)


def test_fusion_single_input_passes_through_and_errors():
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Fusion("sum")([x])), x)
    with pytest.raises(ValueError, match="fusion must be one of .*; received 'cat'"):
        Fusion("cat")
    with pytest.raises(ValueError, match=r"needs inputs of equal width; received widths \[3, 5\]"):
        Fusion("sum")([keras.Input((3,)), keras.Input((5,))])


def test_image_preprocess_matches_application_and_roundtrips(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    want = keras.applications.vgg16.preprocess_input(x.copy())
    got = keras.ops.convert_to_numpy(ImagePreprocess("VGG16")(x))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert ImagePreprocess.from_config(ImagePreprocess("resnet50").get_config()).encoder == "resnet50"
    model, loaded = _roundtrip_model(ImagePreprocess("mobilenet_v2"), keras.Input((8, 8, 3)), tmp_path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), x / 127.5 - 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="image_encoder must be one of .*; received 'alexnet'"):
        ImagePreprocess("alexnet")


def test_masked_mean_pooling_ignores_padding(tmp_path):
    seq = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], "float32")
    mask = np.array([[1, 1, 0]], "int32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(MaskedMeanPooling()(seq, mask)), [[2.0, 3.0]])
    s, m = keras.Input((3, 2)), keras.Input((3,), dtype="int32")
    model = keras.Model([s, m], MaskedMeanPooling()(s, m))
    model.save(str(tmp_path / "p.keras"))
    loaded = keras.models.load_model(str(tmp_path / "p.keras"))
    np.testing.assert_allclose(loaded.predict([seq, mask], verbose=0), [[2.0, 3.0]])


# ------------------------------------------------ every registered tfmm object round-trips

def _pair(width=4):
    return [np.linspace(-1, 1, 2 * width, dtype="float32").reshape(2, width),
            np.linspace(1, 2, 2 * width, dtype="float32").reshape(2, width)]


# registered name -> (object from its config kwargs, Keras inputs, numpy inputs).
_LAYER_CASES = {
    "tfmm>Fusion": (lambda: Fusion("gated"), lambda: [keras.Input((4,)), keras.Input((4,))], _pair),
    "tfmm>PairInteraction": (lambda: pair_heads.PairInteraction(include_inputs=False),
                             lambda: [keras.Input((4,)), keras.Input((4,))], _pair),
    "tfmm>ContrastiveSimilarity": (lambda: pair_heads.ContrastiveSimilarity(temperature=0.2, max_scale=20.0),
                                   lambda: [keras.Input((4,)), keras.Input((4,))], _pair),
    "tfmm>ImagePreprocess": (lambda: ImagePreprocess("resnet50"), lambda: keras.Input((8, 8, 3)),
                             lambda: np.linspace(0, 255, 2 * 8 * 8 * 3, dtype="float32").reshape(2, 8, 8, 3)),
    "tfmm>FirstTokenPooling": (FirstTokenPooling, lambda: keras.Input((3, 4)),
                               lambda: np.linspace(-1, 1, 24, dtype="float32").reshape(2, 3, 4)),
    "tfmm>TokenPooling": (lambda: TokenPooling("mean"), lambda: keras.Input((3, 4)),
                          lambda: np.linspace(-1, 1, 24, dtype="float32").reshape(2, 3, 4)),
    "tfmm>InferenceModeModel": (lambda: _inference_mode_encoder(), lambda: keras.Input((4,)),
                                lambda: np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)),
}


def _inference_mode_encoder():
    """A small encoder with dropout, wrapped to run in inference mode."""
    x = keras.Input((4,))
    return InferenceModeModel(x, keras.layers.Dropout(0.5)(keras.layers.Dense(3)(x)), name="encoder")


def test_inference_mode_model_ignores_the_training_flag():
    encoder = _inference_mode_encoder()
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
    np.testing.assert_array_equal(encoder(x, training=True), encoder(x, training=False))
    plain = keras.Model(encoder.input, encoder.output)  # the same layers, without the wrapper
    assert not np.allclose(plain(np.ones((64, 4), "float32"), training=True),
                           plain(np.ones((64, 4), "float32"), training=False))
# Registered objects whose round trip needs more than inputs, tested where that is at hand.
_TESTED_ELSEWHERE = {
    "tfmm>HubTextEncoder": "tests/models/test_hub.py::test_config_and_keras_file_round_trip (a TF-Hub SavedModel)",
    "tfmm>MaskedMeanPooling": "test_masked_mean_pooling_ignores_padding (two inputs: sequence and mask)",
    "tfmm>LastTokenPooling": "tests/models/test_text_pooling.py (two inputs: sequence and mask)",
    "tfmm>ContrastiveLoss": "test_registered_loss_and_metric_round_trip",
    "tfmm>in_batch_recall_at_1": "test_registered_loss_and_metric_round_trip",
    "tfmm>EncoderScaledAdamW": "tests/training/test_optimizer.py::test_scaling_holds_under_mirrored_strategy_"
                               "and_after_a_checkpoint (an optimizer, saved with its model)",
    "tfmm>SigmoidSimilarity": "tests/models/test_dual_encoders.py::test_sigmoid_loss_is_siglip_loss_and_"
                              "similarity_roundtrips (two inputs, a scale and a bias)",
    "tfmm>SigmoidContrastiveLoss": "tests/models/test_dual_encoders.py::test_sigmoid_loss_is_siglip_loss_and_"
                                   "similarity_roundtrips",
    "tfmm>CoreBytePairTokenizer": "tests/models/test_bpe_tokenizer.py::test_config_round_trip_and_saved_model_file",
    "tfmm>ImageAugmentation": "tests/models/test_augmentation.py::test_augmented_model_reloads_and_predicts_"
                              "like_the_plain_one (random in training: compared at inference)",
}


def _registered() -> set:
    import tfmm.models.bpe_tokenizer  # noqa: F401  (registers CoreBytePairTokenizer; imported on demand)
    import tfmm.models.hub  # noqa: F401  (registers HubTextEncoder)
    import tfmm.tasks  # noqa: F401  (imports every module that registers objects)

    return {name for name in keras.saving.get_custom_objects() if name.startswith("tfmm>")}


def test_every_registered_object_has_a_round_trip_test():
    assert _registered() == set(_LAYER_CASES) | set(_TESTED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(_LAYER_CASES))
def test_registered_layer_round_trips(name, tmp_path):
    make, inputs_of, data_of = _LAYER_CASES[name]
    layer = make()
    assert keras.saving.get_registered_name(type(layer)) == name
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model, loaded = _roundtrip_model(make(), inputs_of(), tmp_path)
    data = data_of()
    np.testing.assert_allclose(loaded.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6)
    assert type(loaded.layers[-1]) is type(layer)


def test_registered_loss_and_metric_round_trip(tmp_path):
    ids = np.stack([np.arange(4), np.arange(4)], 1).astype("float32")
    logits = np.linspace(-2, 2, 16, dtype="float32").reshape(4, 4)
    loss = pair_heads.ContrastiveLoss()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is pair_heads.ContrastiveLoss
    assert float(restored(ids, logits)) == pytest.approx(float(loss(ids, logits)))
    fn = keras.saving.get_registered_object("tfmm>in_batch_recall_at_1")
    assert fn is pair_heads.in_batch_recall_at_1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fn(ids, logits)), [0, 0, 0, 1])
