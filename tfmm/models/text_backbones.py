"""Any KerasHub text backbone as tfmm's text branch: its tokenizer, tfmm's packing, its features.

KerasHub has no preprocessor class that serves every family (``TextClassifierPreprocessor``
fails for GPT-2 and CLIP), so tfmm loads the family's own tokenizer with
``keras_hub.models.Tokenizer.from_preset`` and packs the ids itself:

    [start] + ids[:L - specials] + [end], then pad with the tokenizer's pad id to L,

where ``start`` / ``end`` are the tokenizer's ``start_token_id`` / ``end_token_id`` when it
has them (``[CLS]``/``[SEP]``, ``<s>``/``</s>``, ``<|endoftext|>``, ``<bos>``/``<eos>``), and
``padding_mask`` marks the kept positions. Padding is on the right; pooling follows
``padding_mask``, never the pad id (GPT-2 pads with id 0, a real token).

WordPiece families whose vocabulary has ``[CLS]``, ``[SEP]``, ``[PAD]`` and ``[UNK]`` (BERT,
DistilBERT, ELECTRA, MiniLM) keep tfmm's core-op tokenizer
(:class:`tfmm.models.wordpiece_preprocessor.KerasHubTextPreprocessor`). Byte-level BPE families
whose tokenizer is KerasHub's plain ``BytePairTokenizer`` (GPT-2, RoBERTa, BART, OPT, Falcon,
GPT-NeoX, Llama 3, Qwen...) tokenize with tfmm's core-op twin of it
(:class:`tfmm.models.bpe_tokenizer.CoreBytePairTokenizer`) once it gave KerasHub's very ids on a
check sample (:func:`tfmm.models.bpe_tokenizer.check_sample`); if it did not, a warning says so
and the KerasHub graph stays. The others (SentencePiece: Gemma, XLM-RoBERTa, DeBERTa-v3,
Llama 2; CLIP, Whisper, Mistral Tekken BPE) tokenize with the KerasHub tokenizer's TensorFlow
graph, which keeps TF Text ops in the serving export (``tfmm check-export`` names the oldest
TF Serving that loads them).

The tokenizer always runs as a TensorFlow graph (inside a ``tf.function`` when called
eagerly): KerasHub tokenizers called eagerly take a pure-Python path (``tokenizers`` /
``sentencepiece``) that may split some text differently, and the graph is what the export
holds, so training, prediction and serving tokenize the same way.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from tfmm.models.wordpiece_preprocessor import (
    DEFAULT_TOKENIZER_OPTIONS, TEXT_INPUTS, KerasHubTextPreprocessor, _from_preset,
)

logger = logging.getLogger(__name__)

TOKENIZER_CONFIG = "tokenizer.json"  # KerasHub's name for a saved tokenizer's config
_BERT_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


def load_hub_tokenizer(source: str):
    """The KerasHub tokenizer of a preset name, preset / Hugging Face folder, or a tokenizer
    folder saved by :meth:`KerasHubTokenizerPreprocessor.save` (``tokenizer.json`` + ``assets/``).

    Raises:
        ValueError: the source cannot be loaded (the message says what to pass instead).
    """
    import keras
    import keras_hub  # noqa: F401  (registers the tokenizer classes)

    config_file = os.path.join(source, TOKENIZER_CONFIG)
    if os.path.isfile(config_file) and not os.path.isfile(os.path.join(source, "config.json")):
        with open(config_file, encoding="utf-8") as f:
            tokenizer = keras.saving.deserialize_keras_object(json.load(f))
        tokenizer.load_preset_assets(source)
        return tokenizer
    return _from_preset(keras_hub.models.Tokenizer, source)


def is_core_op_wordpiece(tokenizer) -> bool:
    """Whether tfmm's core-op WordPiece reproduces ``tokenizer`` (a BERT-style WordPiece)."""
    import keras_hub

    if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
        return False
    vocabulary = set(tokenizer.get_vocabulary())
    return (
        all(token in vocabulary for token in _BERT_SPECIAL_TOKENS)
        and getattr(tokenizer, "suffix_indicator", "##") == "##"
        and getattr(tokenizer, "oov_token", "[UNK]") == "[UNK]"
    )


def wordpiece_preprocessor(tokenizer, sequence_length: int) -> KerasHubTextPreprocessor:
    """The core-op preprocessor with ``tokenizer``'s vocabulary and options."""
    options = {name: bool(getattr(tokenizer, name)) for name in DEFAULT_TOKENIZER_OPTIONS}
    return KerasHubTextPreprocessor.from_vocabulary(list(tokenizer.get_vocabulary()), sequence_length, **options)


# The methods of KerasHub's BytePairTokenizer that make its ids; a subclass overriding one
# (CLIP, Whisper, Mistral Tekken) tokenizes its own way.
_BPE_METHODS = ("tokenize", "_tokenize_tf", "_bpe_merge_tf", "_bpe_merge_one_step_tf",
                "_bpe_merge_and_update_cache_tf", "set_vocabulary_and_merges", "_set_vocabulary_and_merges_tf")


_BPE_CHECKS = {}  # (tokenizer class, fingerprint) -> what first_divergence returned


def is_core_op_bpe(tokenizer) -> bool:
    """Whether ``tokenizer`` is KerasHub's plain byte-level ``BytePairTokenizer`` (or a subclass
    that only names its special tokens, as GPT-2's and RoBERTa's do), with integer ids."""
    from keras_hub.tokenizers import BytePairTokenizer

    if not isinstance(tokenizer, BytePairTokenizer) or tokenizer.compute_dtype == "string":
        return False
    return all(getattr(type(tokenizer), name) is getattr(BytePairTokenizer, name) for name in _BPE_METHODS)


def bpe_preprocessor(tokenizer, sequence_length: int) -> "KerasHubTokenizerPreprocessor":
    """A :class:`KerasHubTokenizerPreprocessor` tokenizing with the core-op BPE twin of
    ``tokenizer`` when both give the same ids on the check sample, with ``tokenizer``'s own
    graph (TF Text ops) otherwise; the warning names the first text that differs."""
    from tfmm.models import bpe_tokenizer

    core = bpe_tokenizer.CoreBytePairTokenizer.from_keras_hub(tokenizer, name="core_byte_pair_tokenizer")
    key = (type(tokenizer).__name__, bpe_tokenizer.fingerprint(core))
    if key not in _BPE_CHECKS:  # tracing KerasHub's graph takes seconds: once per process
        _BPE_CHECKS[key] = bpe_tokenizer.first_divergence(
            core, tokenizer, bpe_tokenizer.check_sample(core.unsplittable_tokens))
    divergence = _BPE_CHECKS[key]
    if divergence is None:
        return KerasHubTokenizerPreprocessor(tokenizer, sequence_length, core_tokenizer=core)
    text, ours, theirs = divergence
    logger.warning("%s: the core-op BPE tokenizer gives %s for %r where KerasHub gives %s; tokenizing with "
                   "KerasHub's graph instead (TF Text ops: the export needs a TF Serving that links TF Text)",
                   type(tokenizer).__name__, ours, text, theirs)
    return KerasHubTokenizerPreprocessor(tokenizer, sequence_length)


def hub_text_preprocessor(source: str, sequence_length: int):
    """The preprocessor of any KerasHub text preset: core-op WordPiece where it applies
    (:func:`is_core_op_wordpiece`), core-op byte-level BPE where it applies
    (:func:`is_core_op_bpe`, :func:`bpe_preprocessor`), :class:`KerasHubTokenizerPreprocessor`
    with the tokenizer's own graph otherwise."""
    tokenizer = load_hub_tokenizer(source)
    if is_core_op_wordpiece(tokenizer):
        return wordpiece_preprocessor(tokenizer, sequence_length)
    if is_core_op_bpe(tokenizer):
        return bpe_preprocessor(tokenizer, sequence_length)
    return KerasHubTokenizerPreprocessor(tokenizer, sequence_length)


def causal_backbone_classes() -> tuple:
    """The backbone classes of KerasHub's ``CausalLM`` tasks (GPT-2, Gemma, Llama, Qwen, ...)."""
    import keras_hub

    found, todo = set(), [keras_hub.models.CausalLM]
    while todo:
        task = todo.pop()
        todo.extend(task.__subclasses__())
        backbone_cls = getattr(task, "backbone_cls", None)
        if isinstance(backbone_cls, type):
            found.add(backbone_cls)
    return tuple(sorted(found, key=lambda c: c.__name__))


def _special_id(tokenizer, name: str):
    value = getattr(tokenizer, name, None)
    return None if value is None else int(value)


def pack_tokens(token_ids: tf.RaggedTensor, sequence_length: int, *, start_id=None, end_id=None,
                pad_id: int = 0) -> dict:
    """``[start] + ids[:L - specials] + [end]``, right-padded with ``pad_id`` to ``L`` (core ops).

    Args:
        token_ids: ragged ``[B, None]`` ids, no special tokens.
        sequence_length: ``L``.
        start_id, end_id: int or None (None: no such token).
        pad_id: the id of padded positions (``padding_mask`` is 0 there whatever it is).

    Returns:
        ``{"token_ids", "segment_ids", "padding_mask"}``, int32 ``[B, L]``.

    Raises:
        ValueError: ``sequence_length`` leaves no room for one token besides the specials.
    """
    specials = [i for i in (start_id, end_id) if i is not None]
    if sequence_length < len(specials) + 1:
        raise ValueError(f"sequence_length must be >= {len(specials) + 1} (the special tokens and one more); "
                         f"received {sequence_length}")
    ids = tf.cast(token_ids[:, : sequence_length - len(specials)], tf.int32)
    column = lambda value: tf.fill([ids.nrows(), 1], tf.constant(value, tf.int32))  # noqa: E731
    parts = ([column(start_id)] if start_id is not None else []) + [ids] + (
        [column(end_id)] if end_id is not None else [])
    packed = tf.concat(parts, axis=1) if len(parts) > 1 else ids
    shape = [None, sequence_length]
    return {
        "token_ids": packed.to_tensor(default_value=pad_id, shape=shape),
        "segment_ids": tf.zeros_like(packed).to_tensor(shape=shape),
        "padding_mask": tf.ones_like(packed).to_tensor(shape=shape),
    }


class KerasHubTokenizerPreprocessor(tf.Module):
    """Strings -> ``{token_ids, segment_ids, padding_mask}`` with a KerasHub tokenizer + tfmm packing.

    For families tfmm's core-op WordPiece does not cover (byte-level BPE, SentencePiece). The
    tokenizer runs as a TensorFlow graph, in ``tf.data``, in the serving export and when called
    eagerly alike (see the module docstring).

    Args:
        tokenizer: a KerasHub tokenizer, or a source for :func:`load_hub_tokenizer`.
        sequence_length: pad/truncate to this many tokens (special tokens included).
        core_tokenizer: None, or a layer giving ``tokenizer``'s ids with TensorFlow core ops
            (:class:`tfmm.models.bpe_tokenizer.CoreBytePairTokenizer`): it tokenizes instead,
            so the serving export holds core ops only. ``tokenizer`` still gives the special
            ids and is what :meth:`save` writes.

    Example:
        >>> pre = KerasHubTokenizerPreprocessor("path/to/gpt2_preset", 16)  # doctest: +SKIP
        >>> pre(tf.constant(["a red circle"]))["padding_mask"].shape
        TensorShape([1, 16])
    """

    def __init__(self, tokenizer, sequence_length: int, core_tokenizer=None):
        super().__init__(name="text_preprocessor")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_hub_tokenizer(os.fspath(tokenizer))
        self.tokenizer = tokenizer
        self.core_tokenizer = core_tokenizer
        self.sequence_length = int(sequence_length)
        self.start_id = _special_id(tokenizer, "start_token_id")
        self.end_id = _special_id(tokenizer, "end_token_id")
        pad_id = _special_id(tokenizer, "pad_token_id")
        self.pad_id = 0 if pad_id is None else pad_id
        self._graph_tokenize = tf.function(self._tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
        # Packing fails here, not in the pipeline, when the length leaves no room.
        pack_tokens(tf.ragged.constant([[0]], tf.int32), self.sequence_length,
                    start_id=self.start_id, end_id=self.end_id, pad_id=self.pad_id)

    @property
    def core_ops(self) -> bool:
        """Whether tokenization is made of TensorFlow core ops only (a ``core_tokenizer`` is set)."""
        return self.core_tokenizer is not None

    def _tokenize(self, strings):
        if self.core_tokenizer is not None:
            return self.core_tokenizer.tokenize(strings)
        return tf.cast(self.tokenizer.tokenize(strings), tf.int32)

    def tokenize(self, strings) -> tf.RaggedTensor:
        """``[B]`` strings -> ragged ``[B, None]`` int32 ids (no special tokens), TF graph path.

        Eagerly and inside ``tf.data`` or an export alike, this calls one ``tf.function``
        traced once per preprocessor (tracing a KerasHub BPE tokenizer takes seconds).
        """
        return self._graph_tokenize(tf.reshape(tf.convert_to_tensor(strings, tf.string), [-1]))

    def __call__(self, strings):
        strings = tf.convert_to_tensor(strings, tf.string)
        scalar = strings.shape.rank == 0
        packed = pack_tokens(self.tokenize(strings), self.sequence_length,
                             start_id=self.start_id, end_id=self.end_id, pad_id=self.pad_id)
        return {k: packed[k][0] if scalar else packed[k] for k in TEXT_INPUTS}

    def save(self, folder: str) -> None:
        """Saves the tokenizer (``tokenizer.json`` + ``assets/``), so the run folder alone rebuilds it."""
        os.makedirs(folder, exist_ok=True)
        self.tokenizer.save_to_preset(folder)
