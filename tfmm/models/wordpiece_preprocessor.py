"""The BERT text preprocessor: strings -> the model's token inputs, with core ops only.

``KerasHubTextPreprocessor`` reads a BERT vocabulary and its options (from a KerasHub preset
or folder, or from a tokenizer folder saved in a run directory) and tokenizes and packs with
:mod:`tfmm.data.tokenizer`, so the same ``tf.Module`` runs in the ``tf.data`` pipeline and
in the serving graph. It imports nothing above :mod:`tfmm.data`; the text-encoder specs
(:mod:`tfmm.models.text`) and the TF-Hub exports (:mod:`tfmm.models.hub_export`) use it.
"""

from __future__ import annotations

import functools
import json
import os

import tensorflow as tf

from tfmm.data.tokenizer import WordPieceTokenizer, pack_single_segment

TEXT_INPUTS = ("token_ids", "segment_ids", "padding_mask")
SAVED_VOCAB = "vocab.txt"
SAVED_TOKENIZER_CONFIG = "tokenizer_options.json"
# KerasHub BertTokenizer's defaults: what a run saved before these options were recorded used.
DEFAULT_TOKENIZER_OPTIONS = {"lowercase": False, "strip_accents": False, "split_on_cjk": True}


def _from_preset(cls, source: str, **kwargs):
    try:
        return cls.from_preset(source, **kwargs)
    except Exception as e:
        if os.path.isdir(source):
            raise ValueError(f"could not load {cls.__name__} from folder {source!r}: {e}") from e
        raise ValueError(
            f"could not load KerasHub preset {source!r}: {e}\n"
            "Presets are downloaded from Kaggle/Hugging Face, which this machine may not reach. "
            "Pass a local folder instead (`keras_nlp:/path/to/preset` holding config.json and "
            "the weights, e.g. one saved with `backbone.save_to_preset(dir)`), or use the "
            "offline default `minilm`."
        ) from e


def read_vocabulary(path: str) -> list:
    """The tokens of a vocabulary file, one per line (trailing empty lines dropped)."""
    with open(path, encoding="utf-8") as f:
        vocabulary = [line.rstrip("\n") for line in f]
    while vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    return vocabulary


def _read_tokenizer(source: str) -> tuple:
    """``(vocabulary, options)`` of a run's saved tokenizer folder or a KerasHub BERT tokenizer."""
    options_file = os.path.join(source, SAVED_TOKENIZER_CONFIG)
    if os.path.isfile(options_file):  # saved in a run dir
        with open(options_file, encoding="utf-8") as f:
            options = {**DEFAULT_TOKENIZER_OPTIONS, **json.load(f)}
        return read_vocabulary(os.path.join(source, SAVED_VOCAB)), options
    import keras_hub

    reference = _from_preset(keras_hub.models.BertTokenizer, source)
    options = {name: bool(getattr(reference, name)) for name in DEFAULT_TOKENIZER_OPTIONS}
    return list(reference.get_vocabulary()), options


@functools.lru_cache(maxsize=8)
def _shared_tokenizer(vocabulary: tuple, options: tuple, sequence_length: int) -> tuple:
    """``(WordPieceTokenizer, pack, special ids)`` for one vocabulary, options and length, made once
    per process.

    ``pack`` (strings ``[B]`` -> the packed ``TEXT_INPUTS``) is traced once: every preprocessor
    with the same vocabulary shares it, so each ``tf.data`` map (train, validation, feature
    extraction, callbacks, a reloaded run, an export) calls one concrete function instead of
    tracing the tokenizer again and building its lookup tables again (about a second each).
    """
    tokenizer = WordPieceTokenizer(list(vocabulary), **dict(options))
    special = {}
    for name, token in (("start_id", "[CLS]"), ("end_id", "[SEP]"), ("pad_id", "[PAD]")):
        if token not in vocabulary:
            raise ValueError(f"the vocabulary ({len(vocabulary)} tokens) has no {token} token, which BERT "
                             "packing needs; received a vocabulary starting with "
                             f"{list(vocabulary[:5])}")
        special[name] = vocabulary.index(token)

    def tokenize_and_pack(strings):
        return pack_single_segment(tokenizer.tokenize(strings), sequence_length, **special)

    pack = tf.function(tokenize_and_pack, autograph=False, input_signature=[tf.TensorSpec([None], tf.string)])
    return tokenizer, pack, special


class KerasHubTextPreprocessor(tf.Module):
    """Strings -> ``{token_ids, segment_ids, padding_mask}`` int32, for tf.data and export.

    The vocabulary and options come from the KerasHub ``BertTokenizer`` of ``source``;
    tokenizing and packing are TensorFlow core ops only (:mod:`tfmm.data.tokenizer`), so the same
    graph runs in the ``tf.data`` pipeline and in any TF Serving 2.x.

    Args:
        source: a KerasHub preset name or folder holding a BERT tokenizer, or a tokenizer
            folder saved in a run directory (``vocab.txt`` + ``tokenizer_options.json``).
        sequence_length: pad/truncate to this many tokens ([CLS] and [SEP] included).

    Example:
        >>> pre = KerasHubTextPreprocessor(minilm_path(), 16)
        >>> pre(tf.constant(["a red circle"]))["token_ids"].shape
        TensorShape([1, 16])
    """

    def __init__(self, source: str, sequence_length: int):
        vocabulary, options = _read_tokenizer(source)
        self._build(vocabulary, options, sequence_length)

    @classmethod
    def from_vocabulary(cls, vocabulary, sequence_length: int, **options) -> "KerasHubTextPreprocessor":
        """A preprocessor of ``vocabulary`` (tokens by id) and tokenizer ``options``
        (``lowercase``, ``strip_accents``, ``split_on_cjk``; missing ones take KerasHub's defaults).

        Raises:
            ValueError: ``[CLS]``, ``[SEP]``, ``[PAD]`` or ``[UNK]`` is not in the vocabulary.
        """
        preprocessor = cls.__new__(cls)
        preprocessor._build(list(vocabulary), {**DEFAULT_TOKENIZER_OPTIONS, **options}, sequence_length)
        return preprocessor

    def _build(self, vocabulary: list, options: dict, sequence_length: int) -> None:
        tf.Module.__init__(self, name="text_preprocessor")
        self.tokenizer, self._pack, self._special = _shared_tokenizer(
            tuple(vocabulary), tuple(sorted(options.items())), sequence_length)
        self.sequence_length = sequence_length

    def __call__(self, strings):
        strings = tf.convert_to_tensor(strings, tf.string)
        scalar = strings.shape.rank == 0
        packed = self._pack(tf.reshape(strings, [-1]))
        return {k: packed[k][0] if scalar else packed[k] for k in TEXT_INPUTS}

    def save(self, folder: str) -> None:
        """Saves the vocabulary and tokenizer options, so the run folder alone can rebuild it."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, SAVED_VOCAB), "w", encoding="utf-8") as f:
            f.write("\n".join(self.tokenizer.get_vocabulary()) + "\n")
        with open(os.path.join(folder, SAVED_TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
            json.dump({name: getattr(self.tokenizer, name) for name in DEFAULT_TOKENIZER_OPTIONS}, f)
