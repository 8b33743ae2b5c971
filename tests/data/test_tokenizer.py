"""The core-op WordPiece tokenizer against KerasHub's BertTokenizer (the TF Text graph path)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.text_corpus import build_corpus
from tfmm.data.tokenizer import WordPieceTokenizer, pack_single_segment

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "qu", "##ick", "br", "##own", "fox", ".",
              "cafe", "caf", "##é", "é", "e", "##cole", "ecole", "中", "ss", "stra", "##sse", "##e", ",", "a"]


STRINGS = [tf.TensorSpec([None], tf.string)]


def _graph(fn):
    return tf.function(fn, input_signature=STRINGS)


def _reference(vocabulary, **options):
    import keras_hub

    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, **options)
    return _graph(lambda text: tokenizer(text))  # the TF Text path tfmm trained with


def _ids(fn, texts, batch=512):
    out = []
    for i in range(0, len(texts), batch):
        out += fn(tf.constant(texts[i:i + batch], tf.string)).to_list()
    return out


@pytest.mark.parametrize("options", [
    dict(lowercase=True), dict(lowercase=False), dict(lowercase=True, strip_accents=True),
    dict(lowercase=False, strip_accents=True, split_on_cjk=False),
])
def test_tiny_vocabulary_matches_reference_for_every_option(options):
    texts = ["The quick brown fox.", "THE QUICK, BROWN FOX", "café ÉCOLE e\u0301cole", "Straße STRASSE",
             "中中 a中a", "unknownword the", "", "  \t ", "x" * 101, "qu" * 60]
    ours = WordPieceTokenizer(TINY_VOCAB, **options)
    expected = _ids(_reference(TINY_VOCAB, **options), texts)
    assert ours.tokenize(tf.constant(texts)).to_list() == expected  # eagerly
    assert _ids(_graph(ours.tokenize), texts) == expected  # in a graph
    mapped = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(ours.tokenize)
    assert [row for batch in mapped for row in batch.to_list()] == expected  # inside tf.data


def test_wordpiece_is_greedy_longest_match_first_with_unk_for_uncoverable_words():
    tok = WordPieceTokenizer(["[UNK]", "un", "##aff", "##able", "una", "##ffa", "##b"], lowercase=False)
    # "una" + "##ffa" + "##b" + "##le"? no "##le": the whole word is [UNK], as BERT's reference.
    assert tok.tokenize(tf.constant(["unaffable", "unaffab", "xyz"])).to_list() == [[0], [4, 5, 6], [0]]


def test_pack_single_segment_truncates_and_pads_like_bert():
    ids = tf.ragged.constant([[5, 6, 7, 8], [], [9]])
    out = pack_single_segment(ids, 5, start_id=2, end_id=3, pad_id=0)
    np.testing.assert_array_equal(out["token_ids"], [[2, 5, 6, 7, 3], [2, 3, 0, 0, 0], [2, 9, 3, 0, 0]])
    np.testing.assert_array_equal(out["padding_mask"], [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], np.zeros((3, 5)))
    with pytest.raises(ValueError, match="sequence_length must be >= 2"):
        pack_single_segment(ids, 1, start_id=2, end_id=3, pad_id=0)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"oov_token '\[UNK\]' must be in the vocabulary"):
        WordPieceTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="duplicate tokens"):
        WordPieceTokenizer(["[UNK]", "a", "a"])


@pytest.mark.slow
def test_minilm_tokenizer_equals_keras_hub_on_a_20000_string_corpus():
    """MiniLM's vocabulary and options, >= 20,000 strings from installed text in many languages
    plus Unicode edge cases. The only allowed difference is explained: TF Text's ops end a
    string at its first NUL byte, which the core-op tokenizer treats as whitespace (a control
    character), as KerasHub's own Python path does; for those strings the reference is checked
    on the text with NUL replaced by a space."""
    import keras_hub

    from tfmm.models.text import minilm_path

    reference = keras_hub.models.BertTokenizer.from_preset(minilm_path())
    ours = WordPieceTokenizer(reference.get_vocabulary(), lowercase=reference.lowercase,
                              strip_accents=reference.strip_accents, split_on_cjk=reference.split_on_cjk)
    corpus = build_corpus(20_000)
    assert len(corpus) >= 20_000
    expected = _ids(_graph(lambda t: reference(t)), corpus)
    got = _ids(_graph(ours.tokenize), corpus)
    mismatches = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    unexplained = [i for i in mismatches if b"\x00" not in corpus[i]]
    print(f"\ntokenizer equality: {len(corpus)} strings, {len(mismatches)} mismatches "
          f"({len(mismatches) - len(unexplained)} explained: NUL bytes), {len(unexplained)} unexplained")
    assert unexplained == [], [(corpus[i][:80], got[i][:20], expected[i][:20]) for i in unexplained[:5]]
    with_nul = [i for i, text in enumerate(corpus) if b"\x00" in text]
    assert with_nul, "the corpus must hold strings with NUL bytes"
    spaced = [corpus[i].replace(b"\x00", b" ") for i in with_nul]
    assert [got[i] for i in with_nul] == _ids(_graph(lambda t: reference(t)), spaced)


def test_preprocessor_traces_once_for_every_dataset_and_eager_call(tiny_bert):
    from tfmm.models.text import load_text_preprocessor

    pre = load_text_preprocessor(f"keras_nlp:{tiny_bert}", 8)
    traced = pre._pack.experimental_get_tracing_count()  # > 0 when one of this vocabulary ran before
    ds = tf.data.Dataset.from_tensor_slices(["a red circle", "this thing is blue"]).batch(2)
    batches = [next(iter(ds.map(pre)))["token_ids"].numpy() for _ in range(3)]
    eager = pre(tf.constant(["a red circle", "this thing is blue"]))["token_ids"].numpy()
    after = pre._pack.experimental_get_tracing_count()
    assert 1 <= after <= traced + 1  # four uses: one trace at most
    next(iter(ds.map(pre))), pre(tf.constant(["a"]))
    assert pre._pack.experimental_get_tracing_count() == after
    for batch in batches:
        np.testing.assert_array_equal(batch, eager)
    assert eager.shape == (2, 8) and (eager[:, 0] == pre._special["start_id"]).all()


def test_preprocessors_of_one_vocabulary_share_one_traced_tokenizer(tiny_bert):
    """Each run, reload and export builds its own preprocessor; the tokenizer's tables and
    traced graph are made once per vocabulary, options and length, not once per preprocessor."""
    from tfmm.models.text import load_text_preprocessor
    from tfmm.models.wordpiece_preprocessor import KerasHubTextPreprocessor

    a = load_text_preprocessor(f"keras_nlp:{tiny_bert}", 8)
    b = load_text_preprocessor(f"keras_nlp:{tiny_bert}", 8)
    longer = load_text_preprocessor(f"keras_nlp:{tiny_bert}", 12)
    assert a is not b and a._pack is b._pack and a.tokenizer is b.tokenizer
    assert longer._pack is not a._pack
    texts = tf.constant(["a red circle", "this thing is blue"])
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2)
    from_a = next(iter(ds.map(a)))
    traced = a._pack.experimental_get_tracing_count()
    from_b = next(iter(ds.map(b)))
    np.testing.assert_array_equal(from_a["token_ids"], from_b["token_ids"])
    assert traced >= 1 and b._pack.experimental_get_tracing_count() == traced  # b traced nothing
    np.testing.assert_array_equal(longer(texts)["token_ids"][:, :8], from_a["token_ids"])
    assert longer(texts)["token_ids"].shape == (2, 12)
    vocabulary = a.tokenizer.get_vocabulary()
    with pytest.raises(ValueError, match=r"no \[SEP\] token"):
        KerasHubTextPreprocessor.from_vocabulary([t for t in vocabulary if t != "[SEP]"], 8)
