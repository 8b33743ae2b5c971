"""--feature-views: cached features of augmented copies of the training images, and training on them."""

import json
import logging
import os

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmm.cli_parser import build_parser, config_from_args
from tfmm.config import RunConfig
from tfmm.data.images import decode_image
from tfmm.data.manifest import read_manifest
from tfmm.models.augmentation import ImageAugmentation
from tfmm.models.vision import build_image_encoder
from tfmm.training import cached_fit, feature_cache, feature_views
from tfmm.training.presets import FEATURE_VIEWS, resolve_preset
from tfmm.training.train import train


def _frozen_image_config(**train):
    return RunConfig().replace(
        data={"image_size": 32}, model={"modalities": "image", "image_weights": "none", "freeze_image": True,
                                        "projection_dim": 8, "hidden_dim": 0},
        train={"batch_size": 8, "epochs": 2, "learning_rate": 1e-3, **train})


def test_views_apply_with_the_image_encoder_frozen():
    frozen = _frozen_image_config(feature_views=3)
    assert feature_cache.feature_views(frozen) == 3
    assert feature_cache.feature_views(frozen.replace(train={"feature_views": 0})) == 0
    assert feature_cache.feature_views(frozen.replace(model={"freeze_image": False})) == 0  # the encoder trains
    both = frozen.replace(model={"modalities": "both", "freeze_text": False})
    assert feature_cache.feature_views(both) == 3  # a trained text encoder reads each caption once per view
    assert feature_cache.feature_views(both.replace(model={"freeze_text": True})) == 3
    assert feature_cache.feature_views(frozen.replace(model={"modalities": "text", "freeze_text": True})) == 0
    # Views an epoch trains on: only where the image features are cached.
    def trained_views(config, manifests=()):
        return feature_cache.cached_views(config, feature_cache.cached_modalities(config, manifests=manifests))

    assert trained_views(both) == 3 and trained_views(frozen) == 3
    assert trained_views(both.replace(train={"cache_features": False})) == 0
    prepared = read_manifest(pd.DataFrame({"image": ["a.png"], "text": ["t"], "label": ["x"]}))
    prepared.records = ["train-00000.tfrecord"]
    assert trained_views(both, manifests=(prepared,)) == 0  # TFRecords beside a trained text encoder
    assert trained_views(both.replace(model={"freeze_text": True}), manifests=(prepared,)) == 3
    # --augment with a frozen image encoder: not cached, unless it makes the cached views.
    light = frozen.replace(model={"augment": "light"})
    assert feature_cache.cached_modalities(light.replace(train={"feature_views": 0})) == []
    assert feature_cache.cached_modalities(light) == ["image"]
    assert feature_cache.head_only_cached(light)
    assert (feature_cache.view_augment(light), feature_cache.view_augment(frozen)) == ("light", "light")
    assert feature_cache.view_augment(frozen.replace(model={"augment": "strong"})) == "strong"


def test_feature_views_flag_and_presets():
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d.csv", "--output-dir", "r", "--feature-views", "2"])
    assert config_from_args(args).train.feature_views == 2
    assert config_from_args(parser.parse_args(["train", "--data", "d", "--output-dir", "r"])).train.feature_views is None
    with pytest.raises(ValueError, match=r"feature_views must be >= 0; received -1"):
        RunConfig().replace(train={"feature_views": -1})
    resolved = {p: resolve_preset(RunConfig().replace(train={"preset": p})).train.feature_views
                for p in ("none", "fast", "balanced", "best")}
    assert resolved == {"none": 0, "fast": 0, "balanced": FEATURE_VIEWS, "best": FEATURE_VIEWS}
    given = resolve_preset(RunConfig().replace(train={"preset": "balanced", "feature_views": 1}))
    assert given.train.feature_views == 1
    contrastive = RunConfig().replace(model={"task": "contrastive"})
    assert resolve_preset(contrastive.replace(train={"preset": "balanced"})).train.feature_views == 0
    asked = contrastive.replace(model={"freeze_image": True, "freeze_text": True}, train={"feature_views": 2})
    with pytest.raises(ValueError, match=r"feature_views=2 .* does not fit task 'contrastive'"):
        feature_cache.feature_views(asked)


def test_view_features_are_the_encoder_on_seeded_augmented_images(demo_data, tmp_path, monkeypatch):
    manifest = read_manifest(demo_data["val"])
    config = _frozen_image_config(feature_views=2)
    keras.utils.set_random_seed(0)
    encoder = build_image_encoder("vgg16", weights="none", image_size=32, trainable=False)
    root, n = str(tmp_path / "cache"), len(manifest)
    views, folder, hit = feature_views.cached_view_features(encoder, manifest, config=config, cache_dir=root,
                                                            views=2, batch_size=8, verbose=0)
    assert not hit and views.shape == (2 * n, 512) and views.dtype == np.float32
    assert os.path.basename(folder).startswith("image_views-")
    parts = json.load(open(os.path.join(folder, "key.json")))["parts"]
    assert (parts["views"], parts["augment"], parts["view_seed"]) == (2, "light", feature_views.VIEW_SEED)
    # Row v * n + i: the encoder (inference mode) on view v's augmentation of image i, batch by batch.
    images = np.stack([decode_image(open(p, "rb").read(), 32).numpy() for p in manifest.frame["image"]])
    augment = ImageAugmentation("light", seed=feature_views.VIEW_SEED)
    first_view = np.concatenate([encoder.predict_on_batch(augment(images[i:i + 8], training=True))
                                 for i in range(0, n, 8)])
    np.testing.assert_allclose(views[:n], first_view, rtol=1e-4, atol=1e-4)
    plain = encoder.predict(images, verbose=0)
    changed = ~np.isclose(views[:n], plain, rtol=1e-3, atol=1e-3).all(axis=1)
    assert changed.mean() > 0.5, "most augmented copies should differ from their originals"
    assert not np.allclose(views[:n], views[n:])  # the two views are drawn differently

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached views should have been used")

    monkeypatch.setattr(feature_views, "_view_features", no_extraction)
    again, folder2, hit = feature_views.cached_view_features(encoder, manifest, config=config, cache_dir=root, views=2)
    assert hit and folder2 == folder and np.array_equal(again, views)
    monkeypatch.undo()
    # Another number of views or another augmentation: another entry.
    other = [feature_views.cached_view_features(encoder, manifest, config=cfg, cache_dir=root, views=k,
                                                batch_size=8, verbose=0)[1]
             for cfg, k in ((config, 1), (config.replace(model={"augment": "strong"}), 2))]
    assert len({folder, *other}) == 3


@pytest.mark.slow
def test_head_trains_on_originals_and_cached_views(demo_data, tmp_path, caplog, monkeypatch):
    from tfmm.training import train as train_module

    n = len(read_manifest(demo_data["train"]))
    steps = []
    compile_model = train_module.compile_model
    monkeypatch.setattr(train_module, "compile_model",
                        lambda model, cfg, steps_per_epoch: steps.append(steps_per_epoch) or
                        compile_model(model, cfg, steps_per_epoch))
    with caplog.at_level(logging.INFO, logger="tfmm"):
        result = train(_frozen_image_config(feature_views=2), demo_data["train"], demo_data["val"],
                       str(tmp_path / "run"), verbose=0)
    assert f"training on {3 * n} rows: {n} training rows and 2 augmented views of their images" in caplog.text
    cache = os.path.join(result.run_dir, "feature_cache")
    entries = sorted(os.listdir(cache))
    assert [e.split("-")[0] for e in entries] == ["image", "image", "image_views"]  # train, val; train's views
    assert np.load(os.path.join(cache, entries[2], "features.npy")).shape == (2 * n, 512)
    assert len(result.history["loss"]) == 2 and np.isfinite(result.history["val_loss"]).all()
    assert result.config.train.feature_views == 2
    # The learning-rate schedule spans the epochs' real steps: 1 + 2 copies of each row.
    assert set(steps) == {-(-3 * n // 8)}


def test_views_beside_a_trained_text_encoder_pair_each_caption_with_its_image_views(demo_data, tiny_config):
    from tfmm.data.manifest import build_label_vocab
    from tfmm.models.text import load_text_preprocessor

    manifest = read_manifest(demo_data["val"])
    n, views = len(manifest), 2
    config = tiny_config.replace(model={"freeze_image": True}, train={"feature_views": views, "shuffle_buffer": 1000})
    labels = build_label_vocab(manifest)
    preprocessor = load_text_preprocessor(config.model.text_encoder, config.data.sequence_length)
    # Feature row v * n + i (view v of row i) holds the number v * n + i, so each element says which row it is.
    features = {"image_features": np.arange((1 + views) * n, dtype=np.float32)[:, None].repeat(4, axis=1)}
    ds = cached_fit.cached_dataset(manifest, features, config=config, labels=labels, preprocessor=preprocessor,
                                   batch_size=8, shuffle=True, repeats=1 + views)
    tokens = {k: np.asarray(v) for k, v in preprocessor(tf.constant(manifest.frame["text"].tolist())).items()}
    targets = [labels.index(v) for v in manifest.frame["label"]]
    orders = []
    for _ in range(2):  # two epochs, reshuffled
        seen = []
        for x, y in ds:
            for row, ids, target in zip(x["image_features"][:, 0].numpy().astype(int), x["token_ids"].numpy(),
                                        y.numpy().argmax(axis=1)):
                np.testing.assert_array_equal(ids, tokens["token_ids"][row % n])  # the caption of its row
                assert target == targets[row % n]
                seen.append(row)
        assert sorted(seen) == list(range((1 + views) * n))  # every view of every row, once
        orders.append(seen)
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])
