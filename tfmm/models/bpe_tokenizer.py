"""Byte-level BPE tokenization (GPT-2, RoBERTa) made of TensorFlow core ops only.

KerasHub's ``BytePairTokenizer`` graph splits text with TF Text's ``RegexSplitWithOffsets``
op, which only TF Serving builds that link TF Text load. :class:`CoreBytePairTokenizer` gives
the very ids of that graph (what ``tf.data`` and a KerasHub tokenizer inside a ``tf.function``
compute) with ``tf.strings``, ``tf.lookup`` and a ``tf.while_loop``, in KerasHub's order:

1. pre-tokenization, with KerasHub's own patterns: a ``६`` marker is inserted before each
   space followed by a non-space (RE2 has no ``\\s+(?!\\S)`` lookahead, this emulates it), the
   unsplittable (special) tokens are cut out, the GPT-2 pattern (contractions, `` ?\\p{L}+``,
   `` ?\\p{N}+``, `` ?[^\\s\\p{L}\\p{N}]+``, whitespace runs) cuts each piece, a trailing
   whitespace character (or marker) is cut off each word, and the markers are dropped. Where
   TF Text's ``regex_split`` emits matches and the text between them, this module wraps each
   match in a separator with ``tf.strings.regex_replace`` (the same RE2 patterns) and splits
   on it with ``tf.strings.split``. The separator is the bytes ``FF FF``, which no UTF-8 text
   and no pattern match contain; input bytes ``FF`` are escaped as ``FF FE`` meanwhile;
2. each word's bytes become the byte-to-unicode alphabet (here: their byte values, ids 0-255);
3. the merge loop: in every word at once, the adjacent pair with the lowest merge rank (the
   leftmost when it occurs twice) is merged, until no pair of any word has a rank; a bounded
   ``tf.while_loop`` (at most the longest word's length in bytes), over the distinct words of
   the batch. Pairs and merge results are integers: a hash table maps ``first * S + second``
   to ``rank * 2**32 + merged``;
4. ids through the vocabulary: a token missing from it is -1, as in KerasHub.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

# KerasHub's patterns (keras_hub/src/tokenizers/byte_pair_tokenizer.py), RE2 syntax.
SPECIAL_WHITESPACES = r"\x{a0}\x{2009}\x{202f}\x{3000}"
MARKER = "६"  # KerasHub's stand-in for the lookahead; a word equal to it is dropped
SPLIT_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d"
    rf"|[\s{SPECIAL_WHITESPACES}]+[\n\r\t\f६{SPECIAL_WHITESPACES}]| ?\p{{L}}+|"
    rf" ?[\p{{N}}]+| ?[^\s\p{{L}}\p{{N}}{SPECIAL_WHITESPACES}]+"
)
TRAILING_SPACE_PATTERN = rf"[ \t\r\f\v६{SPECIAL_WHITESPACES}]$"
_SEPARATOR = b"\xff\xff"  # never in UTF-8, never matched by the patterns
_RAW, _ESCAPED = b"\xff", b"\xff\xfe"
_NO_MERGE = np.int64(2**62)
_MERGED_BITS = 32


def bytes_to_unicode() -> list:
    """The GPT-2 byte-to-unicode alphabet: the character standing for each byte value 0-255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def unsplittable_alternates(tokens: Sequence[str]) -> list:
    """KerasHub's stand-ins for unsplittable tokens while the text is split (``ĴA``, ``ĴB``...)."""
    return ["Ĵ" + "".join(chr(ord("A") + int(d)) for d in str(i)) for i in range(len(tokens))]


def _split_around(text, pattern: str, before: bytes = _SEPARATOR, after: bytes = _SEPARATOR):
    """Wraps every match of ``pattern`` in ``before`` / ``after`` (RE2, leftmost-first, global)."""
    return tf.strings.regex_replace(text, f"({pattern})", before + rb"\0" + after)


def _split_on_separator(text) -> tf.RaggedTensor:
    pieces = tf.strings.split(text, _SEPARATOR)
    return tf.ragged.boolean_mask(pieces, pieces != "")


def _replace_bytes(text, old: bytes, new: bytes):
    """``text`` with every ``old`` byte sequence replaced by ``new`` (byte-wise, any bytes)."""
    # A ragged reduce_join drops the empty pieces a row starts with: a guard byte keeps them.
    joined = tf.strings.reduce_join(tf.strings.split(tf.strings.join(["_", text]), old), axis=-1, separator=new)
    length = tf.strings.length(joined)
    return tf.strings.substr(joined, tf.ones_like(length), length - 1)


def _cut_at_nul(text):
    """Each string up to its first NUL byte: TF Text's ``regex_split`` reads no further."""
    pieces = tf.strings.split(text, b"\x00")
    return tf.gather(pieces.flat_values, pieces.row_splits[:-1])


def split_words(text, unsplittable_tokens: Sequence[str] = ()) -> tf.RaggedTensor:
    """Pre-tokenization: ``[B]`` strings -> ragged ``[B, (words)]``, as KerasHub's
    ``split_strings_for_bpe`` (step 1 of the module docstring)."""
    text = tf.strings.regex_replace(text, rf"( )([^\s{SPECIAL_WHITESPACES}])", r"६\1\2")
    # Sic: KerasHub's pattern has no brackets, so it only matches a space then all four special
    # spaces, at the very end; copied as it is, since the ids must be KerasHub's.
    text = tf.strings.regex_replace(text, rf"(\s{SPECIAL_WHITESPACES})$", r"\1६")
    text = _replace_bytes(_cut_at_nul(text), _RAW, _ESCAPED)
    alternates = unsplittable_alternates(unsplittable_tokens)
    for token, alternate in zip(unsplittable_tokens, alternates):
        text = _split_around(text, re.escape(token))
        text = tf.strings.regex_replace(text, re.escape(token), alternate)
    words = _split_on_separator(_split_around(text, SPLIT_PATTERN))
    # A trailing whitespace character (or marker) of a word becomes a word of its own.
    trailing = _split_on_separator(_split_around(words.flat_values, TRAILING_SPACE_PATTERN, after=b""))
    words = words.with_flat_values(trailing).merge_dims(1, 2)
    flat = _replace_bytes(words.flat_values, _ESCAPED, _RAW)
    for token, alternate in zip(unsplittable_tokens, alternates):
        flat = tf.strings.regex_replace(flat, re.escape(alternate), token)
    words = words.with_flat_values(flat)
    return tf.ragged.boolean_mask(words, words != MARKER)


def _merge_tables(vocabulary: Dict[str, int], merges: Sequence[str]):
    """The integer form of the merges: ``(pair keys, packed values, symbol -> vocabulary id, S)``.

    Symbols are the 256 byte characters (ids = byte values), then every string a merge names
    or makes; a pair ``(a, b)`` of rank ``r`` is key ``a * S + b``, value ``r * 2**32 + id(ab)``.
    """
    symbols = {char: b for b, char in enumerate(bytes_to_unicode())}
    pairs = []
    for rank, merge in enumerate(merges):
        parts = str(merge).split(" ")
        if len(parts) != 2:  # "#version: ..." headers: KerasHub ranks them, no pair can match
            continue
        for symbol in (parts[0], parts[1], parts[0] + parts[1]):
            symbols.setdefault(symbol, len(symbols))
        pairs.append((symbols[parts[0]], symbols[parts[1]], rank, symbols[parts[0] + parts[1]]))
    size = len(symbols)
    keys = np.array([a * size + b for a, b, _, _ in pairs], np.int64)
    values = np.array([(rank << _MERGED_BITS) + merged for _, _, rank, merged in pairs], np.int64)
    if len(np.unique(keys)) != len(keys):
        seen, duplicate = set(), None
        for merge in merges:
            duplicate = merge if merge in seen else duplicate
            seen.add(merge)
        raise ValueError(f"merges has a duplicate rule, e.g. {duplicate!r}; each pair may appear once")
    to_vocabulary = np.array([vocabulary.get(symbol, -1) for symbol in symbols], np.int32)
    return keys, values, to_vocabulary, size


@keras.saving.register_keras_serializable(package="tfmm")
class CoreBytePairTokenizer(keras.layers.Layer):
    """Strings -> byte-level BPE ids, as KerasHub's ``BytePairTokenizer`` graph, with core ops.

    Its lookup tables are made in the constructor, outside any ``tf.data`` or ``tf.function``
    trace (as KerasHub's are), so the layer is built when constructed; it has no weights.
    Callable eagerly, inside ``tf.data.Dataset.map`` and inside a serving signature.

    Args:
        vocabulary: dict. Token -> id (GPT-2 ``vocab.json`` / KerasHub ``vocabulary.json``).
        merges: list of str. Merge rules ``"a b"``, highest priority first (``merges.txt``).
        sequence_length: int or None. None returns ragged ``[B, None]`` ids; an int pads
            (with 0) or truncates to a dense ``[B, sequence_length]``.
        add_prefix_space: bool. Put a space in front of each text first.
        unsplittable_tokens: list of str. Tokens kept whole (special tokens), each looked up
            as it is.
        **kwargs: ``keras.layers.Layer`` arguments (``name``...).

    Raises:
        ValueError: a merge rule names a token missing from ``vocabulary``, or repeats.

    Example:
        >>> merges = ["b u", "t t", "e r", "bu tt", "butt er", "f l", "fl y"]
        >>> vocab = {t: i for i, t in enumerate(sorted({p for m in merges for p in
        ...          m.split() + [m.replace(" ", "")]}))}
        >>> CoreBytePairTokenizer(vocab, merges)(tf.constant(["butterfly"])).to_list()
        [[3, 8]]
    """

    def __init__(self, vocabulary: Dict[str, int], merges: Sequence[str], sequence_length: Optional[int] = None,
                 add_prefix_space: bool = False, unsplittable_tokens: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.vocabulary = {str(token): int(i) for token, i in dict(vocabulary).items()}
        self.merges = [str(m) for m in merges]
        for merge in self.merges:
            parts = merge.split(" ")
            if "#version:" not in merge.lstrip() and (
                    len(parts) != 2 or any(p not in self.vocabulary for p in parts)):
                raise ValueError(f"Merge rule {merge!r} must be two tokens of the vocabulary, 'a b'")
        self.sequence_length = None if sequence_length is None else int(sequence_length)
        self.add_prefix_space = bool(add_prefix_space)
        self.unsplittable_tokens = [str(t) for t in (unsplittable_tokens or ())]
        keys, values, self._to_vocabulary, self._symbols = _merge_tables(self.vocabulary, self.merges)
        self._pairs = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), _NO_MERGE)
        if self.unsplittable_tokens:  # a word equal to one skips the merges (KerasHub caches it)
            self._special_index = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.unsplittable_tokens), tf.range(len(self.unsplittable_tokens), dtype=tf.int32)), -1)
        self._special_ids = [[self.vocabulary.get(p, -1) for p in t.split(" ")] for t in self.unsplittable_tokens]
        self.built = True

    def get_vocabulary(self) -> list:
        """The tokens, by id."""
        return [token for token, _ in sorted(self.vocabulary.items(), key=lambda item: item[1])]

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def _merge_loop(self, symbols: tf.RaggedTensor) -> tf.RaggedTensor:
        """BPE merges of each word: ragged ``[W, (bytes)]`` -> ragged ``[W, (symbols)]`` (step 3)."""
        n_words = tf.cast(symbols.nrows(), tf.int32)
        size = tf.constant(self._symbols, tf.int64)

        def step(values, rows, words, out_words, out_values):
            n_open = tf.size(words)
            pair_rows = rows[:-1]
            keys = tf.cast(values[:-1], tf.int64) * size + tf.cast(values[1:], tf.int64)
            packed = tf.where(pair_rows == rows[1:], self._pairs.lookup(keys), _NO_MERGE)
            best = tf.math.unsorted_segment_min(packed, pair_rows, n_open)  # lowest rank per word
            is_open = best < _NO_MERGE
            position = tf.range(tf.size(packed))
            is_best = (packed == tf.gather(best, pair_rows)) & tf.gather(is_open, pair_rows)
            first = tf.math.unsorted_segment_min(tf.where(is_best, position, tf.size(packed)), pair_rows, n_open)
            merge_at = tf.concat([is_best & (position == tf.gather(first, pair_rows)), [False]], 0)
            merged = tf.cast(tf.bitwise.bitwise_and(packed, 2**_MERGED_BITS - 1), tf.int32)
            values = tf.where(merge_at, tf.concat([merged, [0]], 0), values)
            consumed = tf.concat([[False], merge_at[:-1]], 0)
            token_open = tf.gather(is_open, rows)
            out_words = tf.concat([out_words, tf.gather(words, rows[~token_open])], 0)
            out_values = tf.concat([out_values, values[~token_open]], 0)
            keep = token_open & ~consumed
            renumber = tf.cumsum(tf.cast(is_open, tf.int32)) - 1
            return values[keep], tf.gather(renumber, rows[keep]), words[is_open], out_words, out_values

        empty = tf.zeros([0], tf.int32)
        values, rows, words, out_words, out_values = tf.while_loop(
            lambda values, rows, words, *_: tf.size(words) > 0, step,
            (symbols.flat_values, tf.cast(symbols.value_rowids(), tf.int32), tf.range(n_words), empty, empty),
            shape_invariants=(tf.TensorShape([None]),) * 5,
            maximum_iterations=tf.reduce_max(tf.concat([tf.cast(symbols.row_lengths(), tf.int32), [0]], 0)) + 1,
        )
        out_words = tf.concat([out_words, tf.gather(words, rows)], 0)  # none left, unless bounded
        out_values = tf.concat([out_values, values], 0)
        order = tf.argsort(out_words, stable=True)
        return tf.RaggedTensor.from_value_rowids(tf.gather(out_values, order), tf.gather(out_words, order),
                                                 nrows=n_words)

    def _encode_words(self, words: tf.Tensor) -> tf.RaggedTensor:
        """Distinct words ``[W]`` -> ragged ``[W, (ids)]`` vocabulary ids (steps 2-4)."""
        if self.unsplittable_tokens:
            special = self._special_index.lookup(words)
            plain = tf.cast(tf.where(special < 0)[:, 0], tf.int32)
        else:
            plain = tf.range(tf.size(words))
        raw = tf.strings.bytes_split(tf.gather(words, plain))
        byte_values = tf.cast(tf.io.decode_raw(raw.flat_values, tf.uint8)[:, 0], tf.int32)
        merged = self._merge_loop(raw.with_flat_values(byte_values))
        ids = tf.gather(tf.constant(self._to_vocabulary), merged.flat_values)
        rows = [tf.gather(plain, tf.cast(merged.value_rowids(), tf.int32))]
        values = [ids]
        if self.unsplittable_tokens:  # special words keep their own ids
            named = tf.cast(tf.where(special >= 0)[:, 0], tf.int32)
            pieces = tf.gather(tf.ragged.constant(self._special_ids, tf.int32), tf.gather(special, named))
            rows.append(tf.gather(named, tf.cast(pieces.value_rowids(), tf.int32)))
            values.append(pieces.flat_values)
        rows, values = tf.concat(rows, 0), tf.concat(values, 0)
        order = tf.argsort(rows, stable=True)
        return tf.RaggedTensor.from_value_rowids(tf.gather(values, order), tf.cast(tf.gather(rows, order), tf.int64),
                                                 nrows=tf.size(words, out_type=tf.int64))

    def tokenize(self, inputs):
        """Strings -> ids: ``[B]`` -> ragged ``[B, None]`` int32 (dense ``[B, sequence_length]``
        when set); a scalar string -> ``[None]`` (or ``[sequence_length]``)."""
        inputs = tf.convert_to_tensor(inputs, tf.string)
        scalar = inputs.shape.rank == 0
        if inputs.shape.rank is None or inputs.shape.rank > 1:
            raise ValueError(f"tokenize takes a string or a [B] string tensor; received shape {inputs.shape}")
        inputs = tf.reshape(inputs, [-1])
        if self.add_prefix_space:
            inputs = tf.strings.join([" ", inputs])
        words = split_words(inputs, self.unsplittable_tokens)
        unique, index = tf.unique(words.flat_values, out_idx=tf.int32)
        tokens = words.with_flat_values(tf.gather(self._encode_words(unique), index)).merge_dims(1, 2)
        if self.sequence_length:
            tokens = tokens.to_tensor(shape=[None, self.sequence_length])
        return tokens[0] if scalar else tokens

    def call(self, inputs):
        return self.tokenize(inputs)

    def compute_output_spec(self, input_spec):
        return keras.KerasTensor(tuple(input_spec.shape) + (self.sequence_length,), dtype="int32")

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(vocabulary=dict(self.vocabulary), merges=list(self.merges),
                      sequence_length=self.sequence_length, add_prefix_space=self.add_prefix_space,
                      unsplittable_tokens=list(self.unsplittable_tokens))
        return config

    @classmethod
    def from_keras_hub(cls, tokenizer, **kwargs) -> "CoreBytePairTokenizer":
        """The core-op twin of a KerasHub ``BytePairTokenizer`` (vocabulary, merges, options)."""
        return cls(dict(tokenizer.vocabulary), list(tokenizer.merges), add_prefix_space=tokenizer.add_prefix_space,
                   unsplittable_tokens=list(tokenizer.unsplittable_tokens or ()), **kwargs)


# Texts that reach every branch of the pre-tokenization and of the merge loop: contractions,
# digits, punctuation runs, space runs, leading / trailing / special spaces, newlines and
# tabs, non-ASCII letters, emoji, invalid UTF-8, NUL, the marker character itself.
CHECK_TEXTS = (
    "", " ", "a", "a red circle", "The quick brown fox jumps over the lazy dog.", "don't won't I'm we'll they'd",
    "it's 'S 'tis", "Digits 0123456789 and 3.14, 1,000,000 x²", "!!!???... ---- (a) [b] {c} \"d\" #e @f",
    "  two  spaces", "trailing spaces   ", "   ", "tab\there\tand\r\nCRLF", "\n\nnewlines\n\n", "line\n end \n",
    "\u00a0nbsp\u00a0 \u2009thin\u202f\u3000ideographic ", "Grüße, naïve café — «quotes» “curly” ¿Qué?",
    "中文字符测试 漢字とひらがな 한국어", "עברית العربية हिन्दी ६ ६६", "emoji🙂inside 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "zero\u200bwidth soft\u00adhyphen e\u0301", "x" * 40, "aaaaaaaa abababab", "ĴA ĴB",
)
CHECK_BYTES = (b"bad \xff\xfe bytes", b"\xff", b"caf\xc3 x", b"a\x00b", b"\x00", b"ok \x80 ok")


def check_sample(unsplittable_tokens: Sequence[str] = ()) -> list:
    """The texts :func:`first_divergence` compares on: :data:`CHECK_TEXTS`, invalid bytes,
    and each unsplittable token alone, inside words and between spaces."""
    texts = [t.encode("utf-8") for t in CHECK_TEXTS] + list(CHECK_BYTES)
    for token in unsplittable_tokens:
        texts += [token.encode("utf-8"), f"a{token}b {token} {token}{token}. x {token}".encode("utf-8")]
    return texts


def fingerprint(tokenizer: CoreBytePairTokenizer) -> str:
    """A digest of what decides a tokenizer's ids: vocabulary, merges and options."""
    config = {key: value for key, value in tokenizer.get_config().items()
              if key in ("vocabulary", "merges", "add_prefix_space", "unsplittable_tokens")}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def first_divergence(core: CoreBytePairTokenizer, reference, texts: Sequence) -> Optional[tuple]:
    """The first text that ``core`` and a KerasHub tokenizer's TF graph tokenize differently.

    Both run inside a ``tf.function`` (the graph path, as in ``tf.data`` and an export).

    Returns:
        None when all ids agree, else ``(text, core_ids, reference_ids)``.
    """
    spec = [tf.TensorSpec([None], tf.string)]
    batch = tf.constant(list(texts), tf.string)
    ours = tf.function(core.tokenize, input_signature=spec)(batch).to_list()
    theirs = tf.function(lambda s: tf.cast(reference.tokenize(s), tf.int32), input_signature=spec)(batch).to_list()
    for text, a, b in zip(texts, ours, theirs):
        if a != b:
            return text, a, b
    return None
