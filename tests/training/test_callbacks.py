"""TensorBoard reporting: scalars (with the learning rate), confusion-matrix and example
images, hparams and the embedding projector, read back from the event files of one tiny
training run; and training_curves.png."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tfmm.config import RunConfig
from tfmm.data.manifest import read_manifest
from tfmm.tasks import build_model
from tfmm.training import callbacks
from tfmm.training.train import train

EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, demo_data):
    """One tiny run (72 train / 18 val rows, 2 epochs) with every reporting callback."""
    config = RunConfig().replace(
        data={"image_size": 32, "sequence_length": 8},
        model={"text_encoder": f"keras_nlp:{tiny_bert}", "image_weights": "none", "freeze_image": True,
               "projection_dim": 16, "hidden_dim": 16, "dropout": 0.1},
        # No feature cache: the full model's own optimizer steps (its learning rate is checked).
        train={"epochs": EPOCHS, "batch_size": 8, "learning_rate": 1e-3, "cache_features": False},
    )
    return train(config, demo_data["train"], demo_data["val"], str(tmp_path_factory.mktemp("run")), verbose=0)


def _events(folder):
    acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def _values(acc, tag):
    return [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


@pytest.mark.slow
def test_scalars_loss_metrics_and_learning_rate(trained):
    logs = os.path.join(trained.run_dir, "logs")
    train_events, val_events = _events(os.path.join(logs, "train")), _events(os.path.join(logs, "validation"))
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_f1"):
        assert [s for s, _ in _values(train_events, tag)] == list(range(EPOCHS))
        assert [s for s, _ in _values(val_events, tag)] == list(range(EPOCHS))
    loss = [float(v) for _, v in _values(train_events, "epoch_loss")]
    assert loss == pytest.approx(trained.history["loss"], rel=1e-5)
    # The warmup + cosine schedule's value after each epoch: it moves, and the last one is
    # the optimizer's current learning rate.
    lr = [float(v) for _, v in _values(train_events, "epoch_learning_rate")]
    assert len(lr) == EPOCHS and lr[0] != lr[1] and 0 < max(lr) <= 1e-3
    assert lr[-1] == pytest.approx(float(trained.model.optimizer.learning_rate), rel=1e-5)


@pytest.mark.slow
def test_confusion_matrix_and_example_images_each_epoch(trained):
    val_events = _events(os.path.join(trained.run_dir, "logs", "validation"))
    for tag in ("confusion_matrix", "validation_examples"):
        values = _values(val_events, tag)
        assert [s for s, _ in values] == list(range(EPOCHS))
        width, height, png = values[-1][1]
        assert int(width) > 200 and int(height) > 200
        image = tf.image.decode_png(png)
        assert image.shape[0] == int(height) and image.shape[1] == int(width)
        assert float(tf.math.reduce_std(tf.cast(image, tf.float32))) > 10  # not a blank picture


@pytest.mark.slow
def test_hparams_hold_the_run_config(trained):
    # The session sits next to the validation scalars, which become its metric columns.
    session = _events(os.path.join(trained.run_dir, "logs", "validation"))
    content = session.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    info = hparams_metadata.parse_session_start_info_plugin_data(content)
    assert info.hparams["model.fusion"].string_value == "concat"
    assert info.hparams["train.epochs"].number_value == EPOCHS
    assert info.hparams["model.freeze_image"].bool_value is True
    assert info.group_name == os.path.basename(trained.run_dir)
    end = session.SummaryMetadata("_hparams_/session_end_info").plugin_data.content
    assert hparams_metadata.parse_session_end_info_plugin_data(end).status == 1  # STATUS_SUCCESS
    assert "epoch_accuracy" in session.Tags()["tensors"]


@pytest.mark.slow
def test_projector_has_fused_embeddings_with_metadata(trained, demo_data):
    logs = os.path.join(trained.run_dir, "logs", "validation")
    with open(os.path.join(logs, "projector_config.pbtxt")) as f:
        config = text_format.Parse(f.read(), projector.ProjectorConfig())
    (embedding,) = config.embeddings
    reader = tf.train.load_checkpoint(logs)
    vectors = reader.get_tensor(embedding.tensor_name)
    val = read_manifest(demo_data["val"], trained.config.data)
    assert vectors.shape == (len(val), 2 * 16)  # concat of two 16-wide projections

    from tfmm.models import text
    from tfmm.data.pipeline import make_dataset

    pre = text.load_text_preprocessor(trained.config.model.text_encoder, 8,
                                      saved_tokenizer=os.path.join(trained.run_dir, "tokenizer"))
    ds = make_dataset(val, config=trained.config.data, preprocessor=pre, batch_size=8)
    expected, _ = callbacks.fused_embedding_model(trained.model).predict(ds, verbose=0)
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)

    with open(os.path.join(logs, embedding.metadata_path), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert rows[0] == ["label", "predicted", "caption"]
    assert [r[0] for r in rows[1:]] == list(val.frame["label"])
    assert [r[2] for r in rows[1:]] == list(val.frame["text"])
    assert set(r[1] for r in rows[1:]) <= set(trained.labels)
    with Image.open(os.path.join(logs, embedding.sprite.image_path)) as sprite:
        side = int(np.ceil(np.sqrt(len(val)))) * 32
        assert sprite.size == (side, side)
    assert list(embedding.sprite.single_image_dim) == [32, 32]
    # Only the validation run has a checkpoint: the Projector does not list empty copies.
    assert tf.train.latest_checkpoint(os.path.join(trained.run_dir, "logs")) is None


@pytest.mark.slow
def test_training_curves_png(trained):
    path = os.path.join(trained.run_dir, "training_curves.png")
    assert os.path.getsize(path) > 10000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 500


def test_fused_embedding_model_on_a_fresh_model(tiny_config):
    model = build_model(tiny_config.replace(model={"num_classes": 3, "fusion": "sum"}))
    embedder = callbacks.fused_embedding_model(model)
    batch = {"image": np.zeros((2, 32, 32, 3), "float32"), "token_ids": np.ones((2, 8), "int32"),
             "segment_ids": np.zeros((2, 8), "int32"), "padding_mask": np.ones((2, 8), "int32")}
    emb, scores = embedder.predict(batch, verbose=0)
    assert emb.shape == (2, 16)  # sum fusion keeps the projection width
    np.testing.assert_allclose(scores, model.predict(batch, verbose=0), rtol=1e-5)

    image_only = build_model(tiny_config.replace(model={"num_classes": 3, "modalities": "image"}))
    emb, _ = callbacks.fused_embedding_model(image_only).predict({"image": batch["image"]}, verbose=0)
    assert emb.shape == (2, 16)

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="'fusion_head'.*received model 'plain'"):
        callbacks.fused_embedding_model(plain)


def test_reporting_callbacks_without_validation(tmp_path, tiny_config):
    cbs = callbacks.reporting_callbacks(str(tmp_path), tiny_config)
    assert len(cbs) == 1 and "hparams" in type(cbs[0]).__module__
    assert os.path.isdir(tmp_path / "logs" / "train")  # the session goes next to the train scalars
    flat = callbacks.flat_hparams(tiny_config)
    assert flat["data.image_size"] == 32 and flat["model.fusion"] == "concat"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    with pytest.raises(ValueError, match="freq must be >= 1"):
        callbacks.ValidationSummaries(str(tmp_path), None, None, [], freq=0)


def test_validation_summaries_text_only_model_and_freq(tmp_path, tiny_config, demo_data):
    from tfmm.models import text
    from tfmm.data.manifest import build_label_vocab
    from tfmm.data.pipeline import make_dataset

    config = tiny_config.replace(model={"modalities": "text", "num_classes": 9})
    val = read_manifest(demo_data["val"], config.data)
    labels = build_label_vocab(read_manifest(demo_data["train"], config.data))
    pre = text.load_text_preprocessor(config.model.text_encoder, 8)
    ds = make_dataset(val, config=config.data, preprocessor=pre, labels=labels, modalities="text", batch_size=8)
    cb = callbacks.ValidationSummaries(str(tmp_path), ds, val, labels, num_examples=4, freq=2)
    cb.set_model(build_model(config))
    cb.set_params({"epochs": 3})
    cb.on_train_begin()
    for epoch in range(3):
        cb.on_epoch_end(epoch)
    cb.on_train_end()
    events = _events(str(tmp_path / "validation"))
    for tag in ("confusion_matrix", "validation_examples"):
        assert [s for s, _ in _values(events, tag)] == [1, 2]  # every 2nd epoch and the last
