"""make_dataset performance options: in-memory cache, determinism; mixed precision and XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmm.config import DataConfig, TrainConfig
from tfmm.data.labels import ONE_HOT
from tfmm.data.manifest import build_label_vocab, read_manifest
from tfmm.data.pipeline import make_dataset, pipeline_options, should_cache_in_memory
from tfmm.training import precision


def _epochs(ds, n=2):
    return [[(f["image"].numpy(), f["token_ids"].numpy(), t.numpy()) for f, t in ds] for _ in range(n)]


@pytest.fixture(scope="module")
def setup(demo_data):
    manifest = read_manifest(demo_data["train"])
    return manifest, build_label_vocab(manifest)


@pytest.fixture
def preprocessor(tiny_bert):
    from tfmm.models.text import load_text_preprocessor

    return load_text_preprocessor(f"keras_nlp:{tiny_bert}", 8)


def test_memory_cache_keeps_the_seeded_order(setup, preprocessor):
    manifest, labels = setup

    def run(cache_in_memory):
        cfg = DataConfig(image_size=32, sequence_length=8, cache_in_memory=cache_in_memory)
        return _epochs(make_dataset(manifest, config=cfg, preprocessor=preprocessor, labels=labels,
                                           batch_size=16, shuffle=True, seed=3, shuffle_buffer=50))

    plain, cached = run(False), run(True)
    assert len(plain[0]) == 5  # 72 rows, batch 16
    for epoch_a, epoch_b in zip(plain, cached):
        for a, b in zip(epoch_a, epoch_b):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    first = lambda epoch: np.concatenate([t.argmax(1) for _, _, t in epoch])  # noqa: E731
    assert not np.array_equal(first(plain[0]), first(plain[1]))  # reshuffled each epoch


def test_auto_memory_cache_decision():
    assert should_cache_in_memory(DataConfig(image_size=224), 1000)  # 0.6 GB
    assert not should_cache_in_memory(DataConfig(image_size=224), 5000)  # 3 GB
    assert not should_cache_in_memory(DataConfig(image_size=32), 10, use_image=False)
    assert should_cache_in_memory(DataConfig(image_size=224, cache_in_memory=True), 10 ** 6)
    assert not should_cache_in_memory(DataConfig(image_size=8, cache_in_memory=False), 1)


def test_non_deterministic_pipeline_yields_every_row(setup, preprocessor):
    manifest, labels = setup
    cfg = DataConfig(image_size=32, sequence_length=8, deterministic=False)
    ds = make_dataset(manifest, config=cfg, preprocessor=preprocessor, labels=labels, batch_size=16)
    assert ds.options().deterministic is False
    assert ds.options().autotune.enabled is False  # see DataConfig.tf_data_autotune
    assert pipeline_options(DataConfig(tf_data_autotune=True)).autotune.enabled is True
    targets = np.concatenate([t.numpy() for _, t in ds])
    np.testing.assert_array_equal(np.sort(targets.argmax(1)),
                                  np.sort(ONE_HOT.encode(manifest.frame, labels).argmax(1)))


def test_dtype_policy_is_scoped_and_head_output_stays_float32(tiny_config):
    from tfmm.tasks import build_model

    cfg = tiny_config.replace(model={"num_classes": 9, "modalities": "image"})
    with precision.dtype_policy("mixed_bfloat16"):
        model = build_model(cfg)
    assert keras.config.dtype_policy().name == "float32"
    assert model.get_layer("image_encoder").dtype_policy.name == "mixed_bfloat16"
    out = model({"image": tf.zeros((2, 32, 32, 3))})
    assert out.dtype == tf.float32
    with pytest.raises(ValueError, match=r"mixed_precision must be one of .*received 'fp16'"):
        TrainConfig(mixed_precision="fp16")
    assert precision.jit_compile_arg(None) == "auto" and precision.jit_compile_arg(True) is True


@pytest.mark.slow
def test_train_with_mixed_precision_and_xla(tiny_config, demo_data, tmp_path):
    """bfloat16 compute (CPU-friendly) with a cached frozen encoder and an XLA-compiled step."""
    from tfmm.run_dir import load_run
    from tfmm.training.train import train

    cfg = tiny_config.replace(model={"modalities": "image", "freeze_image": True},
                              train={"mixed_precision": "mixed_bfloat16", "jit_compile": True, "epochs": 2})
    result = train(cfg, demo_data["train"], demo_data["val"], str(tmp_path / "run"), verbose=0)
    assert keras.config.dtype_policy().name == "float32"
    assert result.model.get_layer("fusion_head").get_layer("head_hidden").dtype_policy.name == "mixed_bfloat16"
    assert np.isfinite(result.history["loss"]).all()
    run = load_run(result.run_dir)
    scores = run.predict_scores(read_manifest(demo_data["test"]))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_captions_are_tokenized_once_when_the_dataset_is_made(setup, preprocessor, monkeypatch):
    """A small manifest's captions are tokenized once, in chunks, when the dataset is made (the
    tokens travel with the rows); the elements equal the per-batch tokenizing pipeline's."""
    from tfmm.data import pipeline

    manifest, labels = setup
    texts = manifest.frame["text"].to_numpy(dtype=str)
    monkeypatch.setattr(pipeline, "PRETOKENIZE_CHUNK", 16)  # 72 rows: 5 chunks
    chunked = pipeline.tokenize_up_front(preprocessor, texts)
    whole = preprocessor(tf.constant(texts))
    assert sorted(chunked) == sorted(whole) and chunked["token_ids"].shape == (72, 8)
    for name in whole:
        np.testing.assert_array_equal(chunked[name], whole[name].numpy())

    made, original = [], pipeline.tokenize_up_front

    def spy(preprocessor, texts):
        made.append(len(texts))
        return original(preprocessor, texts)

    monkeypatch.setattr(pipeline, "tokenize_up_front", spy)
    cfg = DataConfig(image_size=32, sequence_length=8)
    up_front = make_dataset(manifest, config=cfg, preprocessor=preprocessor, labels=labels, batch_size=16,
                            shuffle=True, seed=3)
    assert made == [72] and "tokens" not in up_front.element_spec[0]
    monkeypatch.setattr(pipeline, "PRETOKENIZE_BYTES", 72 * 8 * 12 - 1)  # one byte short: per batch
    per_batch = make_dataset(manifest, config=cfg, preprocessor=preprocessor, labels=labels, batch_size=16,
                             shuffle=True, seed=3)
    assert made == [72]
    for a, b in zip(_epochs(up_front), _epochs(per_batch)):
        for x, y in zip(a, b):
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)


def test_a_preprocessor_padding_to_each_batch_tokenizes_per_batch(setup, monkeypatch):
    """Outputs whose width changes from call to call (padding to the longest caption) cannot be
    computed up front: every batch is then tokenized as it comes, with its own width."""
    from tfmm.data import pipeline

    manifest, labels = setup
    monkeypatch.setattr(pipeline, "PRETOKENIZE_CHUNK", 8)

    def pad_to_longest(texts):
        lengths = tf.strings.length(texts)
        width = tf.reduce_max(lengths)
        ids = tf.cast(tf.sequence_mask(lengths, width), tf.int32)
        return {"token_ids": ids, "padding_mask": ids > 0}

    assert pipeline.tokenize_up_front(pad_to_longest, manifest.frame["text"].to_numpy(dtype=str)) is None
    ds = make_dataset(manifest, config=DataConfig(image_size=32, sequence_length=8), preprocessor=pad_to_longest,
                      labels=labels, batch_size=8, modalities="text")
    texts = manifest.frame["text"].to_numpy(dtype=str)
    widths = [f["token_ids"].shape[1] for f, _ in ds]
    expected = [max(len(t.encode()) for t in texts[i:i + 8]) for i in range(0, len(texts), 8)]
    assert widths == expected and len(set(widths)) > 1
