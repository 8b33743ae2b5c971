"""Image and text encoders: shapes, weights resolution, presets and clear errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmm.models import text, vision


def test_image_encoder_vgg16_shape_and_freeze():
    enc = vision.build_image_encoder("vgg16", weights="none", image_size=32, trainable=False)
    assert enc.name == "image_encoder"
    assert enc.output_shape == (None, 512)
    assert enc.trainable_weights == []
    out = enc.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert out.shape == (2, 512)


def test_image_weights_from_local_file(tmp_path):
    src = vision.build_image_encoder("vgg16", weights="none", image_size=32)
    backbone = src.get_layer("vgg16")
    path = str(tmp_path / "vgg16_notop.weights.h5")
    backbone.save_weights(path)
    loaded = vision.build_image_encoder("vgg16", weights=path, image_size=32)
    for a, b in zip(backbone.weights, loaded.get_layer("vgg16").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_image_weights_errors(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="image_weights file not found: 'nope.h5'"):
        vision.build_image_encoder("vgg16", weights="nope.h5", image_size=32)
    with pytest.raises(ValueError, match="image_encoder must be one of"):
        vision.build_image_encoder("vgg17", weights="none", image_size=32)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x/vgg16_notop.h5")

    monkeypatch.setenv("HOME", str(tmp_path))  # no cached weights
    monkeypatch.setattr(keras.utils, "get_file", offline)
    import keras.src.applications.vgg16 as vgg_module
    monkeypatch.setattr(vgg_module.file_utils, "get_file", offline)
    with pytest.raises(ValueError) as e:
        vision.build_image_encoder("vgg16", weights="imagenet", image_size=32)
    msg = str(e.value)
    assert "could not get ImageNet weights" in msg and "--image-weights PATH" in msg
    assert "vgg16_notop.h5" in msg


def test_parse_text_spec(tmp_path):
    assert text.parse_text_spec("tfhub:/a/pre,/a/enc") == text.TextSpec("tfhub", "/a/enc", "/a/pre")
    assert text.parse_text_spec(f"keras_nlp:{tmp_path}").source == str(tmp_path)
    assert text.parse_text_spec("keras_hub:bert_tiny_en_uncased").source == "bert_tiny_en_uncased"
    assert os.path.isfile(os.path.join(text.parse_text_spec("minilm").source, "model.safetensors"))
    with pytest.raises(ValueError, match="text_encoder must be 'minilm'.*received 'bert'"):
        text.parse_text_spec("bert")
    with pytest.raises(ValueError, match="needs two handles"):
        text.parse_text_spec("tfhub:only_one")


def test_text_preprocessor_and_encoder_tiny(tiny_bert, tmp_path):
    spec = f"keras_nlp:{tiny_bert}"
    pre = text.load_text_preprocessor(spec, 8)
    out = pre(tf.constant(["a red circle", ""]))
    assert {k: v.shape for k, v in out.items()} == {k: (2, 8) for k in text.TEXT_INPUTS}
    assert all(v.dtype == tf.int32 for v in out.values())
    assert out["padding_mask"].numpy().sum(1).tolist() == [5, 2]  # [CLS] a red circle [SEP]; [CLS][SEP]
    pre.save(str(tmp_path / "tok"))
    again = text.load_text_preprocessor(spec, 8, saved_tokenizer=str(tmp_path / "tok"))
    np.testing.assert_array_equal(again(tf.constant(["a red circle"]))["token_ids"], out["token_ids"][:1])

    for pooling in ("cls", "mean"):
        enc = text.build_text_encoder(spec, sequence_length=8, pooling=pooling)
        assert enc.output_shape == (None, 16)
        feats = enc.predict(out, verbose=0)
        assert feats.shape == (2, 16) and np.isfinite(feats).all()
    frozen = text.build_text_encoder(spec, sequence_length=8, trainable=False)
    assert frozen.trainable_weights == []


def test_minilm_is_a_real_pretrained_encoder():
    pre = text.load_text_preprocessor("minilm", 16)
    enc = text.build_text_encoder("minilm", sequence_length=16, pooling="mean", trainable=False)
    feats = enc.predict(pre(tf.constant(["a red car", "a crimson automobile", "tax law reform"])), verbose=0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    # Pretrained sentence embeddings: paraphrases are closer than unrelated text.
    assert feats[0] @ feats[1] > feats[0] @ feats[2] + 0.2


def test_unreachable_preset_error_suggests_local_folder():
    with pytest.raises(ValueError) as e:
        text.load_text_preprocessor("keras_nlp:no_such_preset_xyz", 8)
    assert "Pass a local folder instead" in str(e.value)
