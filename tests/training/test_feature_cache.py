"""tfmm.cache: keys, hits, misses, invalidation, and cached == uncached training."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfmm.cli_parser import build_parser, config_from_args
from tfmm.config import load_config
from tfmm.data.images import decode_image
from tfmm.data.manifest import Manifest, read_manifest
from tfmm.tasks import build_model
from tfmm.models.text import build_text_encoder, load_text_preprocessor
from tfmm.models.vision import build_image_encoder
from tfmm.run_dir import load_run
from tfmm.training import feature_cache
from tfmm.training.train import train


def _image_encoder(seed=0, size=32):
    keras.utils.set_random_seed(seed)
    return build_image_encoder("vgg16", weights="none", image_size=size, trainable=False)


def _copy_manifest(demo_data, tmp_path, split="val"):
    """A private copy of a demo split (its images can be changed without touching others)."""
    m = read_manifest(demo_data[split])
    folder = tmp_path / "data"
    folder.mkdir()
    frame = m.frame.copy()
    for i, path in enumerate(frame["image"]):
        target = folder / f"{i}.png"
        target.write_bytes(open(path, "rb").read())
        frame.loc[i, "image"] = str(target)
    return Manifest(frame, m.source, str(folder))


def test_key_is_stable_and_changes_with_each_part(tiny_config, demo_data, tmp_path, monkeypatch):
    manifest = _copy_manifest(demo_data, tmp_path)
    key = feature_cache.cache_key("image", _image_encoder(0), manifest, tiny_config)[0]
    assert feature_cache.cache_key("image", _image_encoder(0), manifest, tiny_config)[0] == key  # same weights
    changed = {
        "weights": feature_cache.cache_key("image", _image_encoder(1), manifest, tiny_config)[0],
        "image_size": feature_cache.cache_key("image", _image_encoder(0, 48), manifest,
                                      tiny_config.replace(data={"image_size": 48}))[0],
        "encoder": feature_cache.cache_key("image", _image_encoder(0), manifest,
                                   tiny_config.replace(model={"image_encoder": "VGG19"}))[0],
        "rows": feature_cache.cache_key("image", _image_encoder(0), Manifest(
            manifest.frame.iloc[::-1].reset_index(drop=True), "r", manifest.root), tiny_config)[0],
    }
    monkeypatch.setattr(feature_cache, "PREPROCESSING_VERSION", "changed")
    changed["preprocessing"] = feature_cache.cache_key("image", _image_encoder(0), manifest, tiny_config)[0]
    monkeypatch.undo()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(manifest.frame["image"][4])
    changed["file content"] = feature_cache.cache_key("image", _image_encoder(0), manifest, tiny_config)[0]
    assert all(k != key for k in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_text_key_covers_texts_tokenizer_and_pooling(tiny_config, demo_data):
    manifest = read_manifest(demo_data["val"])
    spec = tiny_config.model.text_encoder
    encoder = build_text_encoder(spec, sequence_length=8, trainable=False)
    pre = load_text_preprocessor(spec, 8)
    key = feature_cache.cache_key("text", encoder, manifest, tiny_config, pre)[0]
    frame = manifest.frame.copy()
    frame.loc[0, "text"] = "another caption"
    other_text = feature_cache.cache_key("text", encoder, Manifest(frame, "x", manifest.root), tiny_config, pre)[0]
    other_pooling = feature_cache.cache_key("text", encoder, manifest, tiny_config.replace(model={"text_pooling": "cls"}), pre)[0]
    pre.tokenizer.lowercase = False
    other_tokenizer = feature_cache.cache_key("text", encoder, manifest, tiny_config, pre)[0]
    assert len({key, other_text, other_pooling, other_tokenizer}) == 4


def test_hit_miss_and_invalidation(tiny_config, demo_data, tmp_path, monkeypatch):
    manifest = _copy_manifest(demo_data, tmp_path)
    encoder, root = _image_encoder(0), str(tmp_path / "cache")
    first, folder, hit = feature_cache.cached_features(encoder, "image", manifest, config=tiny_config, cache_dir=root,
                                               batch_size=8, verbose=0)
    assert not hit and first.shape == (len(manifest), 512) and first.dtype == np.float32
    assert sorted(os.listdir(folder)) == ["features.npy", "key.json"]
    assert json.load(open(os.path.join(folder, "key.json")))["parts"]["image_size"] == 32
    # The stored features are the encoder's inference-mode outputs, row by row.
    direct = encoder.predict(np.stack([decode_image(open(p, "rb").read(), 32).numpy()
                                       for p in manifest.frame["image"][:3]]), verbose=0)
    np.testing.assert_allclose(first[:3], direct, rtol=1e-5, atol=1e-5)

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(feature_cache, "extract_features", no_extraction)
    again, folder2, hit = feature_cache.cached_features(encoder, "image", manifest, config=tiny_config, cache_dir=root)
    assert hit and folder2 == folder and np.array_equal(again, first)
    monkeypatch.undo()

    # Change one image: a new key, recomputed; the other rows' features are unchanged.
    Image.new("RGB", (32, 32), (250, 0, 0)).save(manifest.frame["image"][2])
    changed, folder3, hit = feature_cache.cached_features(encoder, "image", manifest, config=tiny_config,
                                                  cache_dir=root, batch_size=8, verbose=0)
    assert not hit and folder3 != folder
    assert not np.allclose(changed[2], first[2])
    np.testing.assert_allclose(np.delete(changed, 2, 0), np.delete(first, 2, 0), rtol=1e-5, atol=1e-5)
    # Other weights: a new key too.
    assert feature_cache.cached_features(_image_encoder(5), "image", manifest, config=tiny_config, cache_dir=root,
                                 batch_size=8, verbose=0)[2] is False


def test_broken_or_interrupted_entry_is_recomputed(tiny_config, demo_data, tmp_path):
    manifest = _copy_manifest(demo_data, tmp_path)
    encoder, root = _image_encoder(0), str(tmp_path / "cache")
    first, folder, _ = feature_cache.cached_features(encoder, "image", manifest, config=tiny_config, cache_dir=root,
                                             batch_size=8, verbose=0)
    with open(os.path.join(folder, "features.npy"), "wb") as f:
        f.write(b"truncated")
    again, _, hit = feature_cache.cached_features(encoder, "image", manifest, config=tiny_config, cache_dir=root,
                                          batch_size=8, verbose=0)
    assert not hit and np.array_equal(again, first)
    assert not [name for name in os.listdir(root) if ".tmp-" in name]


def test_cache_features_flag_and_auto(tiny_config):
    assert feature_cache.cached_modalities(tiny_config) == []
    frozen = tiny_config.replace(model={"freeze_image": True, "freeze_text": True})
    assert feature_cache.cached_modalities(frozen) == ["image", "text"]
    assert feature_cache.cached_modalities(frozen.replace(model={"modalities": "text"})) == ["text"]
    assert feature_cache.cached_modalities(frozen.replace(train={"cache_features": False})) == []
    with pytest.raises(ValueError, match=r"needs a frozen encoder; received freeze_image=False"):
        feature_cache.cached_modalities(tiny_config.replace(train={"cache_features": True}))
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d.csv", "--output-dir", "r", "--no-cache-features",
                              "--cache-dir", "/c", "--mixed-precision", "mixed_bfloat16", "--jit-compile",
                              "--no-cache-in-memory", "--no-deterministic"])
    tc, dc = config_from_args(args).train, config_from_args(args).data
    assert (tc.cache_features, tc.cache_dir, tc.mixed_precision, tc.jit_compile) == (False, "/c", "mixed_bfloat16", True)
    assert (dc.cache_in_memory, dc.deterministic) == (False, False)
    args = parser.parse_args(["train", "--data", "d.csv", "--output-dir", "r", "--cache-features"])
    assert config_from_args(args).train.cache_features is True
    assert config_from_args(parser.parse_args(["train", "--data", "d", "--output-dir", "r"])).train.cache_features is None


def _head_weights(model):
    return model.get_layer("fusion_head").get_weights()


def _tiny_bert_without_dropout(folder):
    import keras_hub

    from tests.conftest import WORDS

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [",", "."]
    keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=16,
                                  intermediate_dim=32, max_sequence_length=16, dropout=0.0).save_to_preset(folder)
    keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True).save_to_preset(folder)
    return folder


@pytest.fixture(scope="module")
def frozen_runs(tiny_bert, demo_data, tmp_path_factory):
    """Four seeded runs sharing one cache folder, each trained once for every test here:

    - ``image_cached`` / ``image_plain``: the image encoder frozen (the text encoder trains),
      with and without the feature cache;
    - ``both_cached`` / ``both_plain``: both encoders frozen (a BERT without dropout, so the
      uncached run computes the same features), default learning rate. ``both_cached`` uses
      ``image_cached``'s cache folder (``RUN/feature_cache``) as its ``--cache-dir``, with
      image extraction forbidden: it must reuse the image features stored there (same VGG16
      weights, images and size).
    """
    from tfmm.config import RunConfig

    root = tmp_path_factory.mktemp("runs")
    shared = str(root / "image_cached" / "feature_cache")
    image_cfg = RunConfig().replace(
        data={"image_size": 32, "sequence_length": 8},
        model={"text_encoder": f"keras_nlp:{tiny_bert}", "image_weights": "none", "projection_dim": 16,
               "hidden_dim": 16, "dropout": 0.1, "freeze_image": True},
        train={"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 7},
    )
    bert = _tiny_bert_without_dropout(str(root / "bert"))
    both_cfg = image_cfg.replace(
        model={"text_encoder": f"keras_nlp:{bert}", "hidden_dim": 0, "dropout": 0.0, "fusion": "gated",
               "freeze_text": True},
        train={"learning_rate": None, "cache_dir": shared},  # the default rate: every encoder is frozen
    )
    runs = {}

    def run(name, cfg):
        runs[name] = train(cfg, demo_data["train"], demo_data["val"], str(root / name), verbose=0)

    run("image_cached", image_cfg)
    run("image_plain", image_cfg.replace(train={"cache_features": False}))
    extract = feature_cache.extract_features

    def text_only_extraction(encoder, modality, *args, **kwargs):
        if modality == "image":
            raise AssertionError("a run with the same --cache-dir should reuse the image features")
        return extract(encoder, modality, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feature_cache, "extract_features", text_only_extraction)
        run("both_cached", both_cfg)
    run("both_plain", both_cfg.replace(train={"cache_features": False}))
    return {**runs, "shared_cache": shared}


@pytest.mark.slow
def test_cached_and_uncached_runs_match(frozen_runs):
    cached, plain = frozen_runs["image_cached"], frozen_runs["image_plain"]
    assert os.listdir(os.path.join(cached.run_dir, "feature_cache"))
    assert not os.path.exists(os.path.join(plain.run_dir, "feature_cache"))
    # Same rows in the same order, same dropout masks: same weights (VGG16 has no dropout).
    for a, b in zip(_head_weights(cached.model), _head_weights(plain.model)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(cached.model.get_layer("text_encoder").get_weights(),
                    plain.model.get_layer("text_encoder").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cached.history["val_loss"], plain.history["val_loss"], rtol=1e-4)
    assert cached.history["val_accuracy"] == plain.history["val_accuracy"]


@pytest.mark.slow
def test_cached_run_saves_the_full_model(frozen_runs, demo_data):
    cached = frozen_runs["image_cached"]
    run = load_run(cached.run_dir)
    assert set(run.model.input) == {"image", "token_ids", "segment_ids", "padding_mask"}
    manifest = read_manifest(demo_data["test"])
    expected = frozen_runs["image_plain"].model.predict(run.dataset(manifest), verbose=0)
    np.testing.assert_allclose(run.predict_scores(manifest), expected, rtol=1e-4, atol=1e-5)
    # The best checkpoint has the full model's layout, as without the feature_cache.
    fresh = build_model(cached.config)
    fresh.load_weights(os.path.join(cached.run_dir, "checkpoints", "best.weights.h5"))


@pytest.mark.slow
def test_both_frozen_cached_matches_uncached_and_is_reused(frozen_runs):
    cached, plain = frozen_runs["both_cached"], frozen_runs["both_plain"]
    # image_cached stored the image features, both_cached reused them and added the text ones.
    assert sorted(name.split("-")[0] for name in os.listdir(frozen_runs["shared_cache"])) == [
        "image", "image", "text", "text"]
    for a, b in zip(_head_weights(cached.model), _head_weights(plain.model)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The default learning rate of a head on frozen encoders, written into config.yaml.
    for result in (cached, plain):
        saved = load_config(os.path.join(result.run_dir, "config.yaml")).train
        assert (saved.learning_rate, saved.epochs) == (1e-3, 2)


@pytest.mark.slow
def test_cached_run_reports_validation_images_and_projector(frozen_runs, demo_data):
    """TensorBoard's per-epoch images and the projector, scored on the cached features, show
    what the full model computes from the raw rows."""
    from tensorboard.backend.event_processing import event_accumulator

    from tfmm.training import callbacks

    cached = frozen_runs["image_cached"]
    logs = os.path.join(cached.run_dir, "logs", "validation")
    events = event_accumulator.EventAccumulator(logs, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    for tag in ("confusion_matrix", "validation_examples"):
        assert [e.step for e in events.Tensors(tag)] == [0, 1]
    run = load_run(cached.run_dir)
    val = read_manifest(demo_data["val"])
    expected, _ = callbacks.fused_embedding_model(run.model).predict(run.dataset(val), verbose=0)
    vectors = tf.train.load_checkpoint(logs).get_tensor(callbacks.PROJECTOR_TENSOR)
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_head_on_cached_features_stops_early_and_keeps_the_best_epoch(demo_data, tmp_path):
    """Default epochs on the cached path (50), ended by early stopping; the saved model and the
    best checkpoint hold the best epoch's weights."""
    from tfmm.config import RunConfig
    from tfmm.training import resume

    cfg = RunConfig().replace(
        data={"image_size": 32}, model={"modalities": "image", "image_weights": "none", "freeze_image": True,
                                        "projection_dim": 8, "hidden_dim": 0},
        # A rate far too high: the validation loss stops improving within a few epochs.
        train={"batch_size": 8, "learning_rate": 1.0, "early_stopping_patience": 1, "seed": 3},
    )
    result = train(cfg, demo_data["train"], demo_data["val"], str(tmp_path / "run"), verbose=0)
    assert result.config.train.epochs == 50
    assert load_config(os.path.join(result.run_dir, "config.yaml")).train.epochs == 50
    val_loss = result.history["val_loss"]
    assert 2 <= len(val_loss) < 50
    assert resume.read_state(result.run_dir)["stopped_early"] is True
    run = load_run(result.run_dir)
    val = read_manifest(demo_data["val"])
    loss = keras.losses.CategoricalCrossentropy()
    targets = np.eye(len(run.labels))[[run.labels.index(v) for v in val.frame["label"]]]
    assert float(loss(targets, run.predict_scores(val))) == pytest.approx(min(val_loss), rel=1e-4)
    best = build_model(result.config)
    best.load_weights(os.path.join(result.run_dir, "checkpoints", "best.weights.h5"))
    np.testing.assert_allclose(best.predict(run.dataset(val), verbose=0), run.predict_scores(val),
                               rtol=1e-4, atol=1e-6)
