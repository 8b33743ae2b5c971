"""``--image-encoder keras_hub:DIR``: KerasHub image backbones saved as tiny local presets."""

import json
import os

import numpy as np
import pytest

import tfmm
from tests.conftest import make_tiny_config
from tfmm.models import vision
from tfmm.tasks import get_task


def _tiny_resnet_preset(folder):
    """A 2-stack KerasHub ResNet (BatchNorm inside) with an image converter scaling to [0, 1]."""
    import keras_hub

    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3),
    ).save_to_preset(folder)
    keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0).save_to_preset(folder)
    return folder


def test_vit_preset_pools_the_class_token_and_normalizes_inside(tmp_path):
    import keras_hub

    folder = str(tmp_path / "vit")
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=16, num_layers=1, num_heads=2,
                                            hidden_dim=8, mlp_dim=16)
    backbone.save_to_preset(folder)
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0).save_to_preset(folder)
    encoder = vision.build_image_encoder(f"keras_hub:{folder}", image_size=32, trainable=False)
    assert encoder.name == "image_encoder" and encoder.output_shape == (None, 8)
    assert encoder.trainable_weights == []
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    # The preset's weights and converter: features are the class token of the backbone on x/127.5 - 1.
    expected = backbone(pixels / 127.5 - 1.0)[:, 0, :]
    np.testing.assert_allclose(encoder(pixels), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"(?s)could not load KerasHub image backbone .*local preset folder"):
        vision.build_image_encoder(f"keras_hub:{tmp_path / 'missing'}", image_size=32)


@pytest.mark.slow
def test_resnet_preset_trains_evaluates_and_exports(tmp_path, task_data, tiny_bert):
    folder = _tiny_resnet_preset(str(tmp_path / "resnet"))
    data = task_data("classification")
    config = make_tiny_config(tiny_bert).replace(model={"image_encoder": f"keras_hub:{folder}",
                                                        "image_weights": "imagenet"})
    result = tfmm.train(config, data["train"], data["val"], str(tmp_path / "run"), verbose=0)
    assert result.model.get_layer("image_encoder").output_shape == (None, 16)
    assert np.isfinite(result.history["loss"]).all()
    metrics = tfmm.evaluate(result.run_dir, data["val"])
    assert metrics["n_examples"] == 8 and 0.0 <= metrics["accuracy"] <= 1.0
    from tfmm.serving.export import export_for_serving

    import tensorflow as tf

    from tfmm.data.manifest import read_manifest
    from tfmm.run_dir import load_run
    from tfmm.serving import saved_model

    exported = export_for_serving(result.run_dir, str(tmp_path / "export"), warmup_records=2, check=False)
    # The serving graph (decoding, the converter, the backbone) scores as the trained run does.
    manifest = read_manifest(data["val"])
    rows = manifest.frame.head(3)
    serve = saved_model.load_saved_model(exported.path).signatures["serving_default"]
    served = serve(image_bytes=tf.constant([open(p, "rb").read() for p in rows["image"]]),
                   text=tf.constant(list(rows["text"])))["scores"].numpy()
    run = load_run(result.run_dir)
    want = get_task(run.config.model.task).calibrated(run, run.predict_scores(manifest))  # temperature-scaled
    np.testing.assert_allclose(served, want[:3], atol=1e-4)
    assert json.load(open(os.path.join(result.run_dir, "metrics.json")))["n_examples"] == 8
