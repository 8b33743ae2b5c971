"""The core-op byte-level BPE tokenizer gives KerasHub's ``BytePairTokenizer`` graph ids.

The reference is KerasHub's TF graph path (inside a ``tf.function`` / ``tf.data``: what
training and the export run). The vocabularies are made here: a byte-level BPE trained on the
first texts of ``tests/text_corpus.py`` with the GPT-2 pre-tokenizer (consistent merges, as a
real GPT-2 / RoBERTa ``merges.txt``), and small hand-made ones for ties, unknown tokens and
merge lists whose order no training would give.
"""

import collections
import logging

import keras
import numpy as np
import pytest
import regex
import tensorflow as tf

from tests.text_corpus import build_corpus, edge_cases
from tfmm.models import bpe_tokenizer, text_backbones
from tfmm.models.bpe_tokenizer import CoreBytePairTokenizer

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPEC = [tf.TensorSpec([None], tf.string)]
HAND_CASES = [
    "don't", "I'm here, you're there; we've, they'll, he'd", "'S 'T", "1234567890 3.14 10,000", "!!!...???", "a--b",
    "two  spaces", "three   spaces   ", "  leading", "trailing  ", " ", "\n", "a\nb\n\nc\r\n", "\t\tx \t ",
    "naïve Grüße ÅNGSTRÖM", "中文 にほんご 한국어", "emoji🙂 👍🏽👍", "🇯🇵 ❤️", "x\u00a0y \u3000z\u2009", "६ a६b",
    "<|endoftext|>", "a<|endoftext|>b <|endoftext|>", "ĴA", "aaaaaaa", "abababab",
]


def train_bpe(texts, n_merges):
    """A byte-level BPE: the GPT-2 alphabet, ``n_merges`` merges learned on ``texts``."""
    alphabet = bpe_tokenizer.bytes_to_unicode()
    words = collections.Counter()
    for text in texts:
        for word in regex.findall(GPT2_PATTERN, text.decode("utf-8", "replace")):
            words[tuple(alphabet[b] for b in word.encode("utf-8"))] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                take = i + 1 < len(word) and (word[i], word[i + 1]) == (a, b)
                out.append(a + b if take else word[i])
                i += 2 if take else 1
            merged[tuple(out)] += count
        words = merged
    return merges


def _vocabulary(tokens):
    vocabulary = {}
    for token in tokens:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(1500)


@pytest.fixture(scope="module")
def trained(corpus):
    """``(vocabulary, merges)`` of a BPE trained on the corpus' first 300 texts."""
    merges = train_bpe(corpus[:300], 200)
    tokens = bpe_tokenizer.bytes_to_unicode() + [m.replace(" ", "") for m in merges]
    return _vocabulary(tokens + ["<|endoftext|>", "<s>", "<pad>", "</s>", "<unk>", "<mask>"]), merges


@pytest.fixture(scope="module")
def references(trained):
    """KerasHub tokenizers of each option set: GPT-2 (1 special), RoBERTa (5), plain with a prefix space."""
    import keras_hub

    vocabulary, merges = trained
    return {
        "gpt2": keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges),
        "roberta": keras_hub.models.RobertaTokenizer(vocabulary=vocabulary, merges=merges),
        "prefix_space": keras_hub.tokenizers.BytePairTokenizer(vocabulary, merges, add_prefix_space=True),
    }


def _graph_ids(tokenizer, texts):
    fn = tf.function(lambda s: tf.cast(tokenizer.tokenize(s), tf.int32), input_signature=SPEC)
    return fn(tf.constant(list(texts))).to_list()


def _assert_same_ids(reference, texts):
    core = CoreBytePairTokenizer.from_keras_hub(reference)
    ours, theirs = _graph_ids(core, texts), _graph_ids(reference, texts)
    divergent = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not divergent, f"{len(divergent)} of {len(texts)} differ, e.g. {divergent[:3]}"
    return ours


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "roberta", "prefix_space"])
def test_hand_cases_and_check_sample_match_keras_hub(references, name):
    reference = references[name]
    texts = [t.encode("utf-8") for t in HAND_CASES] + bpe_tokenizer.check_sample(reference.unsplittable_tokens or ())
    ids = _assert_same_ids(reference, texts)
    # The cases reach the merges (multi-byte tokens), the specials and the unknown id.
    vocabulary = reference.vocabulary
    assert any(len(ids[i]) < len(t) for i, t in enumerate(texts) if t)
    if name == "gpt2":
        assert ids[HAND_CASES.index("<|endoftext|>")] == [vocabulary["<|endoftext|>"]]


def test_pre_tokenization_matches_keras_hub_split(corpus):
    from keras_hub.src.tokenizers.byte_pair_tokenizer import split_strings_for_bpe

    texts = tf.constant([t.encode("utf-8") for t in HAND_CASES] + edge_cases() + corpus[:300])
    for specials in ([], ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]):  # eager: the same ops, no tracing
        assert bpe_tokenizer.split_words(texts, specials).to_list() == split_strings_for_bpe(texts, specials).to_list()
    words = bpe_tokenizer.split_words(tf.constant(["  a b\xa0\n x  ", "I'll 12ab"])).to_list()
    assert words == [[b" ", b" a", b" b", b"\xc2\xa0\n", b" x", b" ", b" "], [b"I", b"'ll", b" 12", b"ab"]]


@pytest.mark.slow
def test_corpus_ids_match_keras_hub_inside_tf_data(references, corpus):
    """1,500 texts of many languages and scripts, edge cases first, through ``Dataset.map``
    (RoBERTa's five special tokens; GPT-2's one is in the hand cases)."""
    reference = references["roberta"]
    core = CoreBytePairTokenizer.from_keras_hub(reference)

    def ids(tokenizer):
        data = tf.data.Dataset.from_tensor_slices(corpus).batch(64).map(tokenizer.tokenize)
        return [row for batch in data for row in batch.to_list()]

    ours, theirs = ids(core), ids(reference)
    divergent = [(t[:60], a[:8], b[:8]) for t, a, b in zip(corpus, ours, theirs) if a != b]
    assert len(ours) == len(corpus) and not divergent, f"{len(divergent)} differ, e.g. {divergent[:3]}"


def test_ties_unknowns_and_unordered_merges_match_keras_hub():
    """Leftmost of equal pairs first; a byte missing from the vocabulary is -1; merges listed
    in an order no training gives (a rule ranked above the rule that builds its part)."""
    import keras_hub

    merges = ["a a", "b c", "ab c", "a b", "aa a", "c d", "Ġ a", "Ġa a"]
    alphabet = [c for c in bpe_tokenizer.bytes_to_unicode() if c != "e"]  # no "e"
    reference = keras_hub.tokenizers.BytePairTokenizer(
        _vocabulary(alphabet + ["aa", "bc", "ab", "abc", "aaa", "cd", "Ġa", "Ġaa"]), merges)
    texts = [b"aaaa", b"aaaaa", b"abc", b"abcd", b"aab caab", b" aaa aa", b"cdcd", b"ee", b"abce"]
    ids = _assert_same_ids(reference, texts)
    vocabulary = reference.vocabulary
    assert ids[texts.index(b"ee")] == [-1, -1] and ids[texts.index(b"aaaa")] == [vocabulary["aa"]] * 2
    assert ids[texts.index(b"abc")] == [vocabulary["a"], vocabulary["bc"]]  # "b c" ranks above "a b"


def test_eager_graph_and_dataset_map_agree(references):
    core = CoreBytePairTokenizer.from_keras_hub(references["gpt2"])
    texts = tf.constant(["a red circle", "don't  stop", "", "é🙂"])
    eager = core(texts).to_list()
    assert eager == _graph_ids(core, texts.numpy())
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(texts).batch(4).map(core.tokenize))).to_list()
    assert mapped == eager and eager[2] == [] and len(eager[0]) >= 3


def test_scalar_input_and_sequence_length_match_keras_hub(trained):
    import keras_hub

    vocabulary, merges = trained
    reference = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges, sequence_length=5)
    core = CoreBytePairTokenizer.from_keras_hub(reference, sequence_length=5)
    texts = tf.constant(["a red circle is here", "x"])
    np.testing.assert_array_equal(core(texts).numpy(), tf.function(reference.tokenize)(texts).numpy())
    assert core(texts).shape == (2, 5) and core(texts).numpy()[1, 1:].tolist() == [0, 0, 0, 0]
    scalar = CoreBytePairTokenizer(vocabulary, merges)(tf.constant("a red"))
    assert isinstance(scalar, tf.Tensor) and scalar.shape.rank == 1
    assert scalar.numpy().tolist() == CoreBytePairTokenizer(vocabulary, merges)(tf.constant(["a red"])).to_list()[0]


def test_config_round_trip_and_saved_model_file(trained, tmp_path):
    vocabulary, merges = trained
    core = CoreBytePairTokenizer(vocabulary, merges, sequence_length=8, unsplittable_tokens=["<|endoftext|>"])
    config = core.get_config()
    assert config["vocabulary"] == vocabulary and config["merges"] == merges
    assert config["unsplittable_tokens"] == ["<|endoftext|>"] and config["sequence_length"] == 8
    texts = tf.constant(["a red circle<|endoftext|>", "Grüße"])
    expected = core(texts).numpy()
    np.testing.assert_array_equal(CoreBytePairTokenizer.from_config(config)(texts).numpy(), expected)

    inputs = keras.Input(shape=(), dtype="string", name="text")
    model = keras.Model(inputs, CoreBytePairTokenizer.from_config(config)(inputs))
    model.save(tmp_path / "tokenizer.keras")
    loaded = keras.models.load_model(tmp_path / "tokenizer.keras")
    np.testing.assert_array_equal(loaded(texts).numpy(), expected)
    assert isinstance(loaded.layers[-1], CoreBytePairTokenizer)


def test_graph_holds_tensorflow_core_ops_only(references):
    core = CoreBytePairTokenizer.from_keras_hub(references["roberta"])
    graph = tf.function(core.tokenize, input_signature=SPEC).get_concrete_function().graph.as_graph_def()
    ops = {node.op for node in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "While" in ops or "StatelessWhile" in ops
    assert "StaticRegexReplace" in ops and "LookupTableFindV2" in ops and "RegexSplitWithOffsets" not in ops
    assert sorted(op for op in ops if not hasattr(tf.raw_ops, op)) == []  # tf.raw_ops: TensorFlow core


def test_bad_merges_and_inputs_say_what_is_wrong(trained):
    vocabulary, merges = trained
    with pytest.raises(ValueError, match="'q zz'.*two tokens of the vocabulary"):
        CoreBytePairTokenizer(vocabulary, merges + ["q zz"])
    with pytest.raises(ValueError, match="duplicate rule, e.g. 'Ġ t'|duplicate rule"):
        CoreBytePairTokenizer(vocabulary, merges + [merges[0]])
    with pytest.raises(ValueError, match=r"\[B\] string tensor; received shape \(1, 2\)"):
        CoreBytePairTokenizer(vocabulary, merges)(tf.constant([["a", "b"]]))


@pytest.mark.slow
def test_keras_hub_bpe_presets_tokenize_with_core_ops(references, tmp_path):
    """A saved GPT-2 tokenizer routes to the core-op tokenizer, with the KerasHub graph's packed ids."""
    reference = references["gpt2"]
    reference.save_to_preset(str(tmp_path))
    assert text_backbones.is_core_op_bpe(reference)
    preprocessor = text_backbones.hub_text_preprocessor(str(tmp_path), 12)
    assert preprocessor.core_ops and isinstance(preprocessor.core_tokenizer, CoreBytePairTokenizer)
    graph = text_backbones.KerasHubTokenizerPreprocessor(reference, 12)
    assert not graph.core_ops
    texts = tf.constant(["a red circle<|endoftext|>", "Grüße, 123 — the blue square! and more words", ""])
    for key, value in preprocessor(texts).items():
        np.testing.assert_array_equal(value.numpy(), graph(texts)[key].numpy())


def test_divergence_keeps_the_keras_hub_graph_and_says_so(references, monkeypatch, caplog):
    monkeypatch.setattr(bpe_tokenizer, "first_divergence", lambda core, ref, texts: (b"x", [1], [2]))
    monkeypatch.setattr(text_backbones, "_BPE_CHECKS", {})
    with caplog.at_level(logging.WARNING, logger=text_backbones.__name__):
        preprocessor = text_backbones.bpe_preprocessor(references["roberta"], 8)
    assert not preprocessor.core_ops
    assert "gives [1] for b'x' where KerasHub gives [2]" in caplog.text and "TF Text ops" in caplog.text


def test_tokenizers_that_override_the_bpe_path_keep_their_graph(references):
    import keras_hub

    class Lowercasing(keras_hub.tokenizers.BytePairTokenizer):
        def tokenize(self, inputs):
            return super().tokenize(tf.strings.lower(inputs))

    vocabulary, merges = references["gpt2"].vocabulary, references["gpt2"].merges
    assert not text_backbones.is_core_op_bpe(Lowercasing(vocabulary, merges))
    assert not text_backbones.is_core_op_bpe(keras_hub.tokenizers.BytePairTokenizer(vocabulary, merges, dtype="string"))
    assert text_backbones.is_core_op_bpe(references["roberta"])
