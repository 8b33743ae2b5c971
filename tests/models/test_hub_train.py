"""A TF-Hub BERT pair that tfmm did not write trains as the text branch of `tfmm train`.

The pair is written here by hand with plain TensorFlow + TF Text (the way published TF-Hub
BERT models are structured), not with tfmm.hub_export.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from tests.conftest import WORDS
from tfmm.cli import main
from tfmm.data.manifest import read_manifest
from tfmm.evaluation.evaluate import evaluate
from tfmm.run_dir import load_run

SEQ = 8
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [",", "."]


class _Preprocess(tf.Module):
    """strings -> input_word_ids / input_mask / input_type_ids, with TF Text ops."""

    def __init__(self, vocab_file):
        super().__init__()
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.tokenizer = tf_text.BertTokenizer(vocab_file, lower_case=True, token_out_type=tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
        tokens = self.tokenizer.tokenize(strings).merge_dims(-2, -1)
        trimmed = tf_text.RoundRobinTrimmer(SEQ - 2).trim([tokens])
        ids, types = tf_text.combine_segments(trimmed, start_of_sequence_id=2, end_of_segment_id=3)
        ids, mask = tf_text.pad_model_inputs(ids, SEQ)
        types, _ = tf_text.pad_model_inputs(types, SEQ)
        return {"input_word_ids": tf.cast(ids, tf.int32), "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(types, tf.int32)}


def _write_encoder(path, width=12):
    """A reusable SavedModel: embeddings + a tanh pooler, dropout when training."""
    embeddings = tf.Variable(tf.random.stateless_normal([len(VOCAB), width], seed=[1, 2]), name="embeddings")
    pooler = tf.Variable(tf.random.stateless_normal([width, width], seed=[3, 4]) * 0.3, name="pooler")
    root = tf.train.Checkpoint()
    root.variables = [embeddings, pooler]
    root.trainable_variables = [embeddings, pooler]
    root.regularization_losses = []

    def call(inputs, training=False):
        seq = tf.gather(embeddings, inputs["input_word_ids"])
        if training:
            seq = tf.nn.dropout(seq, 0.1)
        mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
        pooled = tf.tanh(tf.matmul(tf.reduce_sum(seq * mask, 1) / tf.reduce_sum(mask, 1), pooler))
        return {"pooled_output": pooled, "sequence_output": seq, "default": pooled, "encoder_outputs": [seq]}

    root.__call__ = tf.function(call)
    spec = {k: tf.TensorSpec([None, None], tf.int32) for k in ("input_word_ids", "input_mask", "input_type_ids")}
    for training in (False, True):
        root.__call__.get_concrete_function(spec, training=training)
    tf.saved_model.save(root, path)
    return [embeddings.numpy(), pooler.numpy()]


@pytest.fixture(scope="module")
def hand_made_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("handmade_hub")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tf.saved_model.save(_Preprocess(str(vocab)), str(root / "preprocess"))
    initial = _write_encoder(str(root / "encoder"))
    return str(root / "preprocess"), str(root / "encoder"), initial


@pytest.mark.slow
def test_hand_made_hub_pair_trains_evaluates_and_reloads(hand_made_pair, demo_data, tmp_path, capsys):
    pre, enc, initial = hand_made_pair
    run_dir = str(tmp_path / "run")
    args = ["train", "--data", demo_data["train"], "--val-data", demo_data["val"], "--output-dir", run_dir,
            "--text-encoder", f"tfhub:{pre},{enc}", "--image-weights", "none", "--image-size", "32",
            "--sequence-length", str(SEQ), "--projection-dim", "16", "--hidden-dim", "16",
            "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-2", "--text-pooling", "cls"]
    assert main(args) == 0

    run = load_run(run_dir)
    layer = run.model.get_layer("text_encoder").get_layer("hub_text_encoder")
    trained = [w.numpy() for w in layer.weights]
    assert len(trained) == 2
    for before, after in zip(initial, trained):
        assert before.shape == after.shape and not np.allclose(before, after)
    # The encoder SavedModel on disk is untouched: training changed the model's copy only.
    reloaded = tf.saved_model.load(enc)
    np.testing.assert_array_equal(reloaded.variables[0].numpy(), initial[0])

    metrics = evaluate(run, demo_data["test"])
    assert metrics["n_examples"] == len(read_manifest(demo_data["test"]))
    assert os.path.exists(os.path.join(run_dir, "metrics.json"))
    # Same tokenization in the pipeline as the preprocessor SavedModel itself.
    ids = run.preprocessor(tf.constant(["a red circle"]))["token_ids"].numpy()
    assert ids[0, :5].tolist() == [2, VOCAB.index("a"), VOCAB.index("red"), VOCAB.index("circle"), 3]


def test_hand_made_preprocessor_keeps_hub_text_preprocessor(hand_made_pair, caplog, monkeypatch):
    """A TF Text BertTokenizer preprocessor is not a tfmm export: it runs as it is, and says so."""
    from tfmm.models import hub
    from tfmm.models import hub_tokenizer
    from tfmm.models.text import load_text_preprocessor

    pre, enc, _ = hand_made_pair
    monkeypatch.setattr(hub, "_LOGGED_TF_TEXT", set())
    assert hub_tokenizer.core_op_preprocessor(pre) is None
    with caplog.at_level("INFO", logger="tfmm.models.hub"):
        preprocessor = load_text_preprocessor(f"tfhub:{pre},{enc}", SEQ)
    assert isinstance(preprocessor, hub.HubTextPreprocessor)
    assert any("keeps its TF Text ops" in r.getMessage() and r.levelname == "INFO" for r in caplog.records)
    texts = tf.constant(["A red circle, big.", ""])
    expected = tf.saved_model.load(pre)(texts)
    got = preprocessor(texts)
    for key, hub_key in hub.CANONICAL_TO_HUB.items():
        np.testing.assert_array_equal(got[key].numpy(), expected[hub_key].numpy())
    assert got["token_ids"].numpy()[1].tolist() == [2, 3] + [0] * (SEQ - 2)
