"""The light ``embedding-bag`` text encoder: hashed words + character n-grams, trained from scratch."""

import numpy as np
import pytest
import tensorflow as tf

from tfmm.models import embedding_bag
from tfmm.models.embedding_bag import BUCKETS, MAX_WORDS, EmbeddingBagPreprocessor
from tfmm.models.text import build_text_encoder, load_text_preprocessor, parse_text_spec

TEXTS = ["A red circle!", "Grüße aus Köln, 東京", ""]


def _hashed(s):
    return int(tf.strings.to_hash_bucket_fast(s, BUCKETS)) + 1 + MAX_WORDS


def test_words_then_ngrams_adapted_words_and_hashed_rest(tmp_path):
    pre = load_text_preprocessor("embedding-bag", 24)
    assert isinstance(pre, EmbeddingBagPreprocessor) and parse_text_spec("embedding-bag").kind == "embedding_bag"
    assert pre.tokenizer.words(tf.constant(TEXTS)).to_list() == [
        [b"a", b"red", b"circle"], ["grüße".encode(), b"aus", "köln".encode(), "東京".encode()], []]
    ids = pre.tokenizer(tf.constant(TEXTS[:1])).to_list()[0]
    # 3 words, then the trigrams of <a>, <red>, <circle>: 1 + 3 + 6.
    assert ids[:4] == [_hashed("w:a"), _hashed("w:red"), _hashed("w:circle"), _hashed("g:<a>")]
    assert len(ids) == 3 + 1 + 3 + 6

    pre.adapt(["a red circle", "a red square", "blue"], min_count=2)
    assert list(pre.tokenizer.vocabulary) == ["a", "red"]  # most frequent first; "blue" seen once
    packed = pre(tf.constant(TEXTS))
    assert packed["token_ids"].numpy()[0, :3].tolist() == [1, 2, _hashed("w:circle")]
    # An unseen, non-English word still maps to its own hashed id and n-gram ids.
    assert packed["padding_mask"].numpy().sum(1).tolist() == [13, 18, 0]
    assert (packed["token_ids"].numpy()[2] == 0).all()
    # Eagerly and in tf.data alike; the saved folder rebuilds the same ids.
    batch = next(iter(tf.data.Dataset.from_tensor_slices(TEXTS).batch(3).map(pre)))
    np.testing.assert_array_equal(batch["token_ids"].numpy(), packed["token_ids"].numpy())
    pre.save(str(tmp_path / "tok"))
    again = load_text_preprocessor("embedding-bag", 24, saved_tokenizer=str(tmp_path / "tok"))
    np.testing.assert_array_equal(again(tf.constant(TEXTS))["token_ids"].numpy(), packed["token_ids"].numpy())
    assert again.tokenizer.get_vocabulary()[:2] == ["a", "red"]


def test_encoder_shape_and_mean_over_the_mask():
    encoder = build_text_encoder("embedding-bag", sequence_length=8)
    assert encoder.output_shape == (None, embedding_bag.EMBEDDING_DIM)
    table = encoder.get_layer("embedding_bag").embeddings.numpy()
    assert table.shape == (embedding_bag.vocabulary_size(), embedding_bag.EMBEDDING_DIM)
    ids = np.array([[5, 7, 0, 0, 0, 0, 0, 0]], "int32")
    out = encoder({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": (ids > 0).astype("int32")})
    np.testing.assert_allclose(np.asarray(out)[0], (table[5] + table[7]) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="takes text_pooling 'mean'.*received text_pooling='last'"):
        build_text_encoder("embedding-bag", pooling="last")


@pytest.mark.slow
def test_embedding_bag_trains_and_exports_with_core_ops_only(demo_data, tmp_path):
    from tfmm.cli import main
    from tfmm.evaluation.evaluate import evaluate
    from tfmm.run_dir import load_run
    from tfmm.serving.export import export_for_serving

    run_dir = str(tmp_path / "run")
    assert main(["train", "--data", demo_data["train"], "--val-data", demo_data["val"], "--output-dir", run_dir,
                 "--text-encoder", "embedding-bag", "--modalities", "text", "--sequence-length", "32",
                 "--projection-dim", "16", "--hidden-dim", "0", "--epochs", "3", "--batch-size", "8",
                 "--learning-rate", "3e-2"]) == 0
    run = load_run(run_dir)
    assert isinstance(run.preprocessor, EmbeddingBagPreprocessor)
    metrics = evaluate(run, demo_data["test"])
    assert metrics["accuracy"] > 1 / len(run.labels)  # the captions name the class: above chance
    export = export_for_serving(run, str(tmp_path / "saved_models"), warmup_records=2, check_rows=4)
    assert export.report.ok, str(export.report)
    assert export.report.serving["core_ops_only"], export.report.serving
    load = next(c for c in export.report.checks if c.name == "load")
    assert "tensorflow_text not imported" in load.detail
