"""--augment: random in training only, identity at inference, saved and reloaded, never cached."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmm.config import RunConfig
from tfmm.models.augmentation import LAYER_NAME, ImageAugmentation
from tfmm.tasks import build_model
from tfmm.training import feature_cache
from tfmm.training.optimizer import HEAD_EPOCHS, resolve_train_defaults


def _images(n=4, size=32):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _config(**model) -> RunConfig:
    return RunConfig().replace(
        data={"image_size": 32},
        model={"modalities": "image", "image_weights": "none", "projection_dim": 8, "hidden_dim": 0,
               "dropout": 0.0, "num_classes": 3, **model},
    )


@pytest.mark.parametrize("mode", ["light", "strong"])
def test_layer_changes_images_in_training_only(mode):
    layer = ImageAugmentation(mode, seed=1)
    x = _images()
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape and not np.allclose(out, x)
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(layer(x), x)  # a bare call is inference, unlike the Keras layers' default
    clone = ImageAugmentation.from_config(layer.get_config())
    assert (clone.mode, clone.seed, len(clone.augmentations)) == (mode, 1, len(layer.augmentations))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="augment must be one of .*received 'heavy'"):
        ImageAugmentation("heavy")


def test_augmented_model_reloads_and_predicts_like_the_plain_one(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(_config(augment="light"))
    assert model.get_layer(LAYER_NAME).mode == "light"
    plain = build_model(_config())
    for name in ("image_encoder", "fusion_head"):
        plain.get_layer(name).set_weights(model.get_layer(name).get_weights())
    x = {"image": _images()}  # the model's input structure: a dict
    expected = plain.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(model(x, training=True), expected, atol=1e-6)  # it does augment in training
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer(LAYER_NAME).get_config()["mode"] == "light"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    # The inference graph (what an export traces) holds no random or image-warping op.
    graph = tf.function(lambda images: loaded({"image": images}, training=False)).get_concrete_function(
        tf.TensorSpec([None, 32, 32, 3], tf.float32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert not {op for op in ops if "Random" in op or "ImageProjectiveTransform" in op}, ops


def test_frozen_encoder_under_augmentation_stays_in_inference_mode():
    """The augmentation acts in training mode, the frozen encoder after it does not (it is the
    inference-mode wrapper): model(x, training=True) == head(encoder(augment(x)) in inference)."""
    from tfmm.models.freezing import InferenceModeModel

    keras.utils.set_random_seed(0)
    model = build_model(_config(augment="strong", freeze_image=True))
    augment, encoder = model.get_layer(LAYER_NAME), model.get_layer("image_encoder")
    assert isinstance(encoder, InferenceModeModel) and not isinstance(augment, InferenceModeModel)
    head = model.get_layer("fusion_head")
    x = _images(8)
    states = [v.numpy() for v in augment.variables]  # the random layers' seed states
    assert states, "the random layers keep their seed state in variables"
    out = np.asarray(model({"image": x}, training=True))
    for v, s in zip(augment.variables, states):
        v.assign(s)
    augmented = augment(x, training=True)
    assert not np.allclose(augmented, x)
    features = encoder(augmented, training=False)
    assert not np.allclose(features, encoder(x, training=False), rtol=1e-3)  # augmentation reached it
    expected = head({"image_features": features})
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(out, model({"image": x}, training=False), rtol=1e-3, atol=1e-7)


def test_augmented_frozen_encoder_is_not_cached(caplog):
    config = _config(augment="light", freeze_image=True)
    with caplog.at_level(logging.INFO, logger="tfmm.training.feature_cache"):
        assert feature_cache.cached_modalities(config) == []
    lines = [r for r in caplog.records if "--augment light" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "not caching the frozen image encoder" in lines[0].getMessage()
    assert feature_cache.head_only_cached(config) is False
    assert resolve_train_defaults(config, head_only_cached=False).train.epochs != HEAD_EPOCHS
    # Without augmentation the same frozen encoder is cached and only the head trains.
    assert feature_cache.cached_modalities(_config(freeze_image=True)) == ["image"]
    assert feature_cache.head_only_cached(_config(freeze_image=True)) is True
    # Both frozen: the text features are still cached, the augmented image branch runs each batch.
    both = _config(augment="light", freeze_image=True, freeze_text=True, modalities="both")
    assert feature_cache.cached_modalities(both) == ["text"]
    assert feature_cache.head_only_cached(both) is False
