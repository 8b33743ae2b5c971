"""Every KerasHub text family trains one step, evaluates, predicts and exports (tiny presets).

Each family's preset is written here with ``save_to_preset`` (one layer, width 16, a tiny
vocabulary): DistilBERT (WordPiece: tfmm's core-op tokenizer), RoBERTa and GPT-2 (byte-level
BPE) and Gemma (SentencePiece, a model trained here with the ``sentencepiece`` package). The
runs are text-only (``--modalities text``), one training step each (batch = the 72 rows).
"""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmm.cli import main
from tfmm.data.manifest import read_manifest
from tfmm.evaluation.evaluate import evaluate, predict
from tfmm.run_dir import load_run
from tfmm.serving.export import export_for_serving
from tfmm.tasks import get_task

SEQ = 16
WORDS = ("a one this thing is painted the colour here it should be shown in as caption says imagine "
         "coloured picture of something red green blue circle square triangle photo").split()


def _byte_level_bpe(specials_first, specials_last=()):
    """A byte-level BPE vocabulary (every byte, a few merges) and its merges."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    merges = ["Ġ r", "Ġr e", "Ġre d", "c i", "ci r", "Ġ b", "l u", "Ġb lu"]
    tokens = list(specials_first) + bytes_to_unicode()[1] + [m.replace(" ", "") for m in merges]
    vocabulary = {}
    for token in list(tokens) + list(specials_last):
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary, merges


def make_tiny_preset(family: str, folder: str) -> str:
    """Writes a tiny KerasHub preset of ``family`` (distil_bert, roberta, gpt2, gemma)."""
    import keras_hub

    small = dict(num_layers=1, hidden_dim=16, intermediate_dim=32)
    if family == "distil_bert":
        vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
        tokenizer = keras_hub.models.DistilBertTokenizer(vocabulary=vocabulary, lowercase=True)
        backbone = keras_hub.models.DistilBertBackbone(
            vocabulary_size=len(vocabulary), num_heads=2, max_sequence_length=32, **small)
    elif family == "roberta":
        vocabulary, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
        tokenizer = keras_hub.models.RobertaTokenizer(vocabulary=vocabulary, merges=merges)
        backbone = keras_hub.models.RobertaBackbone(
            vocabulary_size=len(vocabulary), num_heads=2, max_sequence_length=32, **small)
    elif family == "gpt2":
        # <|endoftext|> last, as in GPT-2: the pad id 0 is then a real token ("!").
        vocabulary, merges = _byte_level_bpe([], ["<|endoftext|>"])
        tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=len(vocabulary), num_heads=2, max_sequence_length=32, **small)
    elif family == "gemma":
        import sentencepiece

        proto = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter([" ".join(WORDS)] * 8), model_writer=proto, vocab_size=48,
            model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
            unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>", hard_vocab_limit=False, minloglevel=2)
        tokenizer = keras_hub.models.GemmaTokenizer(proto=proto.getvalue())
        backbone = keras_hub.models.GemmaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_query_heads=2, num_key_value_heads=1,
            head_dim=8, **small)
    else:
        raise ValueError(family)
    backbone.save_to_preset(folder)
    tokenizer.save_to_preset(folder)
    return folder


def _family_run(family, pooling, demo_data, root, check=True):
    """Trains one step, evaluates, predicts and exports one family; returns what each gave."""
    preset = make_tiny_preset(family, str(root / "preset"))
    run_dir = str(root / "run")
    code = main(["train", "--data", demo_data["train"], "--val-data", demo_data["val"], "--output-dir", run_dir,
                 "--text-encoder", f"keras_hub:{preset}", "--modalities", "text", "--text-pooling", pooling,
                 "--sequence-length", str(SEQ), "--projection-dim", "8", "--hidden-dim", "0",
                 "--epochs", "1", "--batch-size", "72", "--learning-rate", "1e-2"])
    assert code == 0
    run = load_run(run_dir)
    metrics = evaluate(run, demo_data["test"])
    predictions = predict(run, demo_data["test"])
    export = export_for_serving(run, str(root / "saved_models"), warmup_data=demo_data["val"],
                                warmup_records=2, check_rows=4, check=check)
    return {"preset": preset, "run": run, "metrics": metrics, "predictions": predictions, "export": export}


def _fixture(family, pooling, check=True):
    @pytest.fixture(scope="session")
    def run(demo_data, tmp_path_factory):
        return _family_run(family, pooling, demo_data, tmp_path_factory.mktemp(f"text_{family}"), check)
    return run


distil_bert_run = _fixture("distil_bert", "cls")
# The fresh-process export check of a byte-level BPE graph runs for GPT-2; RoBERTa's export is
# checked in this process (same core-op BPE tokenizer graph, tens of seconds less).
roberta_run = _fixture("roberta", "mean", check=False)
gpt2_run = _fixture("gpt2", "last")
gemma_run = _fixture("gemma", "last")

FAMILIES = {  # fixture -> (preprocessor class, backbone class, core-op export)
    "distil_bert_run": ("KerasHubTextPreprocessor", "DistilBertBackbone", True),
    # Byte-level BPE tokenizes with tfmm's core-op twin of KerasHub's BytePairTokenizer.
    "roberta_run": ("KerasHubTokenizerPreprocessor", "RobertaBackbone", True),
    "gpt2_run": ("KerasHubTokenizerPreprocessor", "GPT2Backbone", True),
    "gemma_run": ("KerasHubTokenizerPreprocessor", "GemmaBackbone", False),
}


def _backbone_weights(model):
    import keras_hub

    encoder = model.get_layer("text_encoder") if model.name != "text_encoder" else model
    return next(layer for layer in encoder.layers if isinstance(layer, keras_hub.models.Backbone))


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted(FAMILIES))
def test_family_trains_evaluates_predicts_and_exports(fixture, request, demo_data):
    import keras_hub

    result = request.getfixturevalue(fixture)
    preprocessor_class, backbone_class, core_ops = FAMILIES[fixture]
    run = result["run"]
    assert type(run.preprocessor).__name__ == preprocessor_class
    assert getattr(run.preprocessor, "core_ops", True) == core_ops

    # One training step moved the backbone's weights away from the preset's.
    backbone = _backbone_weights(run.model)
    assert type(backbone).__name__ == backbone_class
    initial = keras_hub.models.Backbone.from_preset(result["preset"])
    changed = [not np.allclose(a, b) for a, b in zip(initial.get_weights(), backbone.get_weights())]
    assert len(changed) == len(backbone.weights) and any(changed)

    n_test = len(read_manifest(demo_data["test"]))
    assert result["metrics"]["n_examples"] == n_test and 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert len(result["predictions"]) == n_test
    assert set(result["predictions"][0]["labels"]) <= set(run.labels)

    # The run folder alone rebuilds the tokenizer (tokenizer/ holds it): same ids as the preset's.
    texts = tf.constant(["a red circle", "Grüße, 123 — the blue square!", ""])
    from tfmm.models.text import load_text_preprocessor

    fresh = load_text_preprocessor(f"keras_hub:{result['preset']}", SEQ)
    for key, value in run.preprocessor(texts).items():
        np.testing.assert_array_equal(value.numpy(), fresh(texts)[key].numpy())

    # Export: the checks passed (fresh process, same outputs), and the ops verdict names the server.
    if result["export"].report is None:  # exported unchecked: compare its outputs here
        _assert_serves_like_the_model(result["export"].path, run, demo_data, core_ops)
        return
    report = result["export"].report
    assert report is not None and report.ok, str(report)
    ops = next(c for c in report.checks if c.name == "ops")
    if core_ops:
        assert report.serving["core_ops_only"], ops.detail
    else:
        assert not report.serving["core_ops_only"] and report.serving["oldest_tf_serving"], ops.detail
        assert "loads in TF Serving" in ops.detail
    with open(os.path.join(result["export"].path, "assets.extra", "tfmm.json"), encoding="utf-8") as f:
        assert json.load(f)["text_encoder"] == f"keras_hub:{result['preset']}"


def _assert_serves_like_the_model(path, run, demo_data, core_ops):
    """The export's ``serving_default`` scores equal the model's on the run's own tokenization."""
    from tfmm.serving import saved_model

    texts = read_manifest(demo_data["test"]).frame["text"].tolist()[:4]
    fn = saved_model.load_saved_model(path).signatures["serving_default"]
    images = tf.constant([b""] * len(texts))
    served = fn(image_bytes=images, text=tf.constant(texts))["scores"].numpy()
    raw = run.model.predict(dict(run.preprocessor(tf.constant(texts))), verbose=0)
    expected = get_task(run.config.model.task).calibrated(run, raw)  # the run's temperature applied
    np.testing.assert_allclose(served, expected, atol=1e-5)
    ops = set(saved_model.saved_model_ops(path))
    # Core-op BPE: no TF Text split op (TF Serving 2.12+ only) left in the graph.
    assert ("RegexSplitWithOffsets" in ops) != core_ops and ("StaticRegexReplace" in ops) == core_ops


@pytest.mark.slow
def test_gpt2_pads_with_a_real_token_and_pools_the_end_token(gpt2_run):
    """GPT-2 pads with id 0 (a real token): the mask, not the id, says where the text ends."""
    run = gpt2_run["run"]
    packed = run.preprocessor(tf.constant(["a red circle"]))
    ids, mask = packed["token_ids"].numpy()[0], packed["padding_mask"].numpy()[0]
    end = run.preprocessor.tokenizer.end_token_id
    n = int(mask.sum())
    assert ids[0] == end and ids[n - 1] == end and n < SEQ
    assert (ids[n:] == 0).all() and run.preprocessor.tokenizer.id_to_token(0) == "!"
    assert run.model.get_layer("text_encoder").get_layer("last_token_pooling") is not None


def test_half_precision_backbone_with_lora_trains_adapters_only(tmp_path):
    """``dtype`` sets the backbone's dtype; ``lora_rank`` leaves only the adapters (and the
    biases of the adapted query/value layers, as KerasHub's ``enable_lora`` does) trainable."""
    from tfmm.models.text import build_text_encoder

    preset = make_tiny_preset("gemma", str(tmp_path / "gemma"))
    encoder = build_text_encoder(f"keras_hub:{preset}", sequence_length=SEQ, pooling="last",
                                 dtype="bfloat16", lora_rank=2)
    backbone = _backbone_weights(encoder)
    assert backbone.dtype_policy.name == "bfloat16"
    trainable = [w.path for w in encoder.trainable_weights]
    assert trainable and all("lora_kernel" in p or p.endswith("/bias") for p in trainable), trainable
    assert sum("lora_kernel" in p for p in trainable) == 4  # query and value: kernels a and b
    inputs = {k: np.ones((2, SEQ), "int32") for k in ("token_ids", "segment_ids", "padding_mask")}
    features = encoder(inputs)
    assert features.shape == (2, 16) and np.isfinite(keras_numpy(features)).all()
    # The run's model.keras keeps dtype and adapters: a reload gives the same features.
    import keras

    encoder.save(str(tmp_path / "encoder.keras"))
    loaded = keras.models.load_model(str(tmp_path / "encoder.keras"))
    assert _backbone_weights(loaded).dtype_policy.name == "bfloat16"
    np.testing.assert_allclose(keras_numpy(loaded(inputs)), keras_numpy(features), atol=1e-2)


def keras_numpy(x):
    import keras

    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def test_cls_pooling_of_a_causal_decoder_is_refused(tmp_path):
    """Under causal attention the first token sees only itself: 'cls' would be one vector for all."""
    from tfmm.models.text import build_text_encoder

    preset = make_tiny_preset("gemma", str(tmp_path / "gemma"))
    with pytest.raises(ValueError, match=r"text_pooling 'cls' takes the first token.*\(GemmaBackbone\).*use "
                                         r"text_pooling 'last' or 'mean'"):
        build_text_encoder(f"keras_hub:{preset}", sequence_length=SEQ, pooling="cls")
