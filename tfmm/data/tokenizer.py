"""BERT WordPiece tokenization made of TensorFlow core ops only.

Stock TensorFlow Serving binaries link their own, older TF Text build (2.12.1 in releases
2.12 - 2.19), so a graph that tokenizes with TF Text ops may not load there. This module
tokenizes exactly as KerasHub's ``WordPieceTokenizer`` / ``BertTokenizer`` does inside a
``tf.function`` (the TF Text path), with ``tf.strings``, ``tf.lookup``, ``tf.ragged`` and a
``tf.while_loop`` only, and is used both in the ``tf.data`` pipeline and in the serving graph,
so training and serving tokenize identically by construction.

The steps, in KerasHub's order:

1. invalid UTF-8 bytes become U+FFFD (``tf.strings.unicode_transcode``);
2. CJK ideographs get a space on each side (``split_on_cjk``);
3. ``strip_accents``: each code point becomes its NFD decomposition without nonspacing marks
   (``\\p{Mn}``), looked up in a table;
4. the text is split on whitespace, control and format characters (dropped) and on
   punctuation and CJK characters (kept as words), with the same RE2 patterns;
5. ``lowercase``: each word is case folded (NFKC_Casefold) code point by code point, looked
   up in a table, then adjacent code points that NFKC composes are composed (a bounded loop);
6. greedy longest-match-first WordPiece over each word, ``[UNK]`` for a word that cannot be
   covered or is longer than 100 bytes (a ``tf.while_loop``, all words at once).

The per-code-point tables of steps 3 and 5 are computed once per process from the reference
implementation (TF Text's ``normalize_utf8`` and ``case_fold_utf8``) when a tokenizer is
built; the graph only looks values up. Known differences from the TF Text path, each a corner
that real text rarely reaches, are listed in the README (Development, "Tokenizer fidelity").
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from typing import Sequence

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

# The patterns of keras_hub's word_piece_tokenizer.py (RE2 syntax), so splitting matches.
WHITESPACE_REGEX = r"\s|\p{Cc}|\p{Cf}"
PUNCTUATION_REGEX = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
CJK_REGEX = (
    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]"
    r"|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)
MAX_BYTES_PER_WORD = 100
_MISSING = b"\xff"  # never valid UTF-8, so it cannot be a table value
_CODE_POINTS = 0x110000


def _all_code_points() -> np.ndarray:
    return np.array([c for c in range(_CODE_POINTS) if not 0xD800 <= c <= 0xDFFF], np.int32)


@functools.lru_cache(maxsize=None)
def _reference_tables() -> dict:
    """``{"strip_accents": (keys, values), "case_fold": (keys, values)}``: the code points
    whose reference mapping is not themselves, and what they map to (UTF-8 bytes)."""
    import tensorflow_text as tf_text

    code_points = _all_code_points()
    chars = tf.strings.unicode_encode(tf.constant(code_points)[:, None], "UTF-8")
    mapped = {
        "strip_accents": tf.strings.regex_replace(tf_text.normalize_utf8(chars, "NFD"), r"\p{Mn}", ""),
        "case_fold": tf_text.case_fold_utf8(chars),
    }
    chars = chars.numpy()
    tables = {}
    for name, values in mapped.items():
        values = values.numpy()
        changed = values != chars
        tables[name] = (code_points[changed], values[changed])
    return tables


@functools.lru_cache(maxsize=None)
def _composition_pairs() -> tuple:
    """Adjacent code point pairs that canonical composition (NFC, within NFKC) joins into one:
    ``(keys, composites)`` with ``key = first * 0x110000 + second`` (int64)."""
    keys, values = [], []
    for c in range(_CODE_POINTS):
        decomposition = unicodedata.decomposition(chr(c))
        if not decomposition or decomposition.startswith("<"):
            continue
        parts = [int(p, 16) for p in decomposition.split()]
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(c):
            keys.append(parts[0] * _CODE_POINTS + parts[1])
            values.append(c)
    # Hangul: L + V -> LV, LV + T -> LVT (algorithmic, so not in the decomposition data).
    for l_index in range(19):
        for v_index in range(21):
            lv = 0xAC00 + (l_index * 21 + v_index) * 28
            keys.append((0x1100 + l_index) * _CODE_POINTS + 0x1161 + v_index)
            values.append(lv)
            for t_index in range(1, 28):
                keys.append(lv * _CODE_POINTS + 0x11A7 + t_index)
                values.append(lv + t_index)
    return np.array(keys, np.int64), np.array(values, np.int32)


def _static_table(keys, values, default) -> tf.lookup.StaticHashTable:
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), default
    )


class WordPieceTokenizer(tf.Module):
    """Strings -> WordPiece ids, as KerasHub's ``WordPieceTokenizer``, with core ops only.

    A ``tf.Module`` (its lookup tables are tracked: keep it as an attribute of what you export,
    or pass it to ``keras.export.ExportArchive.track``), callable eagerly, inside
    ``tf.data.Dataset.map`` and inside a serving signature.

    Args:
        vocabulary: list of str. WordPiece tokens; suffix pieces start with
            ``suffix_indicator``.
        lowercase: bool. Case fold each word (NFKC_Casefold, as ``case_fold_utf8``).
        strip_accents: bool. Drop nonspacing marks after NFD decomposition.
        split_on_cjk: bool. Make each CJK ideograph a word of its own.
        suffix_indicator: str. Prefix of the pieces that continue a word.
        oov_token: str. The token of a word that cannot be covered; must be in ``vocabulary``.
        name: str or None. Module name.

    Raises:
        ValueError: ``oov_token`` is not in ``vocabulary``, or ``vocabulary`` has duplicates.

    Example:
        >>> tok = WordPieceTokenizer(["[UNK]", "the", "qu", "##ick", "."], lowercase=True)
        >>> tok.tokenize(tf.constant(["The quick."])).to_list()
        [[1, 2, 3, 4]]
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        *,
        lowercase: bool = False,
        strip_accents: bool = False,
        split_on_cjk: bool = True,
        suffix_indicator: str = "##",
        oov_token: str = "[UNK]",
        name: str = None,
    ):
        super().__init__(name=name or "wordpiece_tokenizer")
        vocabulary = [str(token) for token in vocabulary]
        if oov_token not in vocabulary:
            raise ValueError(f"oov_token {oov_token!r} must be in the vocabulary ({len(vocabulary)} tokens)")
        if len(set(vocabulary)) != len(vocabulary):
            duplicates = sorted({t for t in vocabulary if vocabulary.count(t) > 1})[:5]
            raise ValueError(f"the vocabulary has duplicate tokens, e.g. {duplicates}")
        self.vocabulary = vocabulary
        self.lowercase, self.strip_accents = bool(lowercase), bool(strip_accents)
        self.split_on_cjk, self.suffix_indicator = bool(split_on_cjk), suffix_indicator
        self.oov_token, self.oov_id = oov_token, vocabulary.index(oov_token)
        self._vocab = _static_table(vocabulary, np.arange(len(vocabulary), dtype=np.int32), -1)
        # The longest piece, in characters, bounds the prefixes tried at each step.
        self.max_piece_chars = max(
            len(t[len(suffix_indicator):]) if t.startswith(suffix_indicator) else len(t) for t in vocabulary
        )
        tables = _reference_tables() if (lowercase or strip_accents) else {}
        if strip_accents:
            self._strip_accents = _static_table(*tables["strip_accents"], _MISSING)
        if lowercase:
            self._case_fold = _static_table(*tables["case_fold"], _MISSING)
            self._compose = _static_table(*_composition_pairs(), -1)

    def get_vocabulary(self) -> list:
        """The tokens, by id (as KerasHub tokenizers name it)."""
        return list(self.vocabulary)

    # --- the steps, each on a flat or ragged string tensor --------------------------------

    @staticmethod
    def _map_code_points(text: tf.Tensor, table: tf.lookup.StaticHashTable) -> tf.Tensor:
        """Replaces each code point of valid UTF-8 strings by its table value (kept when absent)."""
        chars = tf.strings.unicode_split(text, "UTF-8")
        code_points = tf.strings.unicode_decode(text, "UTF-8")
        mapped = table.lookup(code_points.flat_values)
        values = tf.where(mapped == _MISSING, chars.flat_values, mapped)
        return tf.strings.reduce_join(chars.with_flat_values(values), axis=-1)

    def _compose_pairs(self, words: tf.Tensor) -> tf.Tensor:
        """Joins adjacent code points that canonical composition joins, left to right."""
        code_points = tf.strings.unicode_decode(words, "UTF-8")

        def shift(x, fill, left):  # x moved one place left (or right), ``fill`` at the free end
            end = tf.fill(tf.shape(x[:1]), tf.constant(fill, x.dtype))
            return tf.concat([x[1:], end], 0) if left else tf.concat([end, x[:-1]], 0)

        def one_pass(values, row_ids):
            same_row = shift(row_ids, -1, True) == row_ids
            key = tf.cast(values, tf.int64) * _CODE_POINTS + tf.cast(shift(values, 0, True), tf.int64)
            composite = tf.where(same_row, self._compose.lookup(key), -1)
            joins = composite >= 0
            # A pair joins unless the pair before it joins (that one consumes its first).
            joins &= ~shift(joins, False, False)
            consumed = shift(joins, False, False)
            values = tf.where(joins, composite, values)
            return values[~consumed], row_ids[~consumed], tf.reduce_any(joins)

        values, row_ids, _ = tf.while_loop(
            lambda values, row_ids, changed: changed, lambda values, row_ids, _: one_pass(values, row_ids),
            (code_points.flat_values, code_points.value_rowids(), tf.constant(True)),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
            maximum_iterations=8,
        )
        composed = tf.RaggedTensor.from_value_rowids(values, row_ids, nrows=tf.size(words, tf.int64))
        return tf.strings.unicode_encode(composed, "UTF-8")

    def split_words(self, text: tf.Tensor) -> tf.RaggedTensor:
        """Words of each string, before case folding: ``[B]`` -> ragged ``[B, None]`` (steps 1-4)."""
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        if self.split_on_cjk:
            text = tf.strings.regex_replace(text, CJK_REGEX, r" \0 ")
        if self.strip_accents:  # ASCII has no marks and decomposes to itself
            text = _map_where(text, _non_ascii(text), lambda t: self._map_code_points(t, self._strip_accents))
        text = tf.strings.regex_replace(text, WHITESPACE_REGEX, " ")
        kept = PUNCTUATION_REGEX + ("|" + CJK_REGEX if self.split_on_cjk else "")
        text = tf.strings.regex_replace(text, kept, r" \0 ")
        words = tf.strings.split(text, sep=" ")
        return tf.ragged.boolean_mask(words, words != "")

    def fold_case(self, words: tf.Tensor) -> tf.Tensor:
        """NFKC_Casefold of each word ``[W]`` (step 5); ASCII words take ``tf.strings.lower``."""
        def fold(w):
            return self._compose_pairs(self._map_code_points(w, self._case_fold))

        # Case folding an ASCII-lowered word gives what folding the word itself gives.
        return _map_where(tf.strings.lower(words), _non_ascii(words), fold)

    def _wordpiece(self, words: tf.Tensor) -> tf.RaggedTensor:
        """Greedy longest-match-first WordPiece of each word: ``[W]`` -> ragged ``[W, None]``.

        A word found whole in the vocabulary is one lookup; the others go through a loop that
        at each step takes, for every word still open, the longest vocabulary piece at its
        position (``##``-prefixed after the first), and closes a word that has none as ``[UNK]``.
        """
        n_words = tf.size(words)
        n_chars = tf.strings.length(words, unit="UTF8_CHAR")
        too_long = tf.strings.length(words) > MAX_BYTES_PER_WORD
        whole = self._vocab.lookup(words)
        is_whole = (whole >= 0) & ~too_long
        prefix = tf.constant(self.suffix_indicator)

        def body(open_words, start, piece_words, pieces, unknown):
            remaining = tf.gather(n_chars, open_words) - start
            longest = tf.minimum(self.max_piece_chars, tf.reduce_max(remaining))
            tried = tf.minimum(tf.range(longest, 0, -1)[tf.newaxis], remaining[:, tf.newaxis])  # [A, K]
            candidates = tf.strings.substr(
                tf.broadcast_to(tf.gather(words, open_words)[:, tf.newaxis], tf.shape(tried)),
                tf.broadcast_to(start[:, tf.newaxis], tf.shape(tried)), tried, unit="UTF8_CHAR")
            candidates = tf.where(start[:, tf.newaxis] > 0, prefix + candidates, candidates)
            ids = self._vocab.lookup(candidates)
            found = ids >= 0  # longer tries come first; clipped tries repeat a shorter one
            has = tf.reduce_any(found, axis=1)
            best = tf.argmax(tf.cast(found, tf.int32), axis=1, output_type=tf.int32)
            piece = tf.gather(ids, best, axis=1, batch_dims=1)
            start += tf.gather(tried, best, axis=1, batch_dims=1)
            piece_words = tf.concat([piece_words, open_words[has]], 0)
            pieces = tf.concat([pieces, piece[has]], 0)
            unknown = tf.concat([unknown, open_words[~has]], 0)
            still_open = has & (start < tf.gather(n_chars, open_words))
            return open_words[still_open], start[still_open], piece_words, pieces, unknown

        first = tf.cast(tf.where(~is_whole & ~too_long & (n_chars > 0))[:, 0], tf.int32)
        empty = tf.zeros([0], tf.int32)
        _, _, piece_words, pieces, unknown = tf.while_loop(
            lambda open_words, *_: tf.size(open_words) > 0, body,
            (first, tf.zeros_like(first), empty, empty, empty),
            shape_invariants=(tf.TensorShape([None]),) * 5,
        )
        unknown = tf.concat([unknown, tf.cast(tf.where(too_long)[:, 0], tf.int32)], 0)
        is_unknown = tf.scatter_nd(unknown[:, tf.newaxis], tf.ones_like(unknown), [n_words]) > 0
        keep = ~tf.gather(is_unknown, piece_words)  # an unknown word drops the pieces it had
        whole_words = tf.cast(tf.where(is_whole)[:, 0], tf.int32)
        rows = tf.concat([whole_words, piece_words[keep], unknown], 0)
        values = tf.concat([tf.gather(whole, whole_words), pieces[keep], tf.fill(tf.shape(unknown), self.oov_id)], 0)
        order = tf.argsort(rows, stable=True)  # pieces were added in word order, step by step
        return tf.RaggedTensor.from_value_rowids(tf.gather(values, order), tf.cast(tf.gather(rows, order), tf.int64),
                                                 nrows=tf.cast(n_words, tf.int64))

    def tokenize_words(self, text) -> tf.RaggedTensor:
        """``[B]`` strings -> ragged ``[B, (words), (wordpieces)]`` int32 ids, piece ids per word.

        The TF-Hub BERT ``tokenize`` shape; :meth:`tokenize` is this with the word dimension
        merged. Each distinct word of the batch is case folded and split into pieces once.

        Example:
            >>> tok.tokenize_words(tf.constant(["The quick."])).to_list()
            [[[1], [2, 3], [4]]]
        """
        text = tf.convert_to_tensor(text, tf.string)
        words = self.split_words(tf.reshape(text, [-1]))
        unique, index = tf.unique(words.flat_values, out_idx=tf.int32)
        if self.lowercase:
            unique = self.fold_case(unique)
        pieces = tf.gather(self._wordpiece(unique), index)
        return words.with_flat_values(pieces)

    def tokenize(self, text) -> tf.RaggedTensor:
        """``[B]`` strings -> ragged ``[B, None]`` int32 token ids (no special tokens).

        Example:
            >>> tok.tokenize(tf.constant(["The quick."]))
        """
        return self.tokenize_words(text).merge_dims(1, 2)

    def __call__(self, text) -> tf.RaggedTensor:
        """Same as :meth:`tokenize` (KerasHub tokenizers are called this way)."""
        return self.tokenize(text)


def _non_ascii(strings: tf.Tensor) -> tf.Tensor:
    return ~tf.strings.regex_full_match(strings, "[\\x00-\\x7f]*")


def _map_where(strings: tf.Tensor, where: tf.Tensor, fn) -> tf.Tensor:
    """``strings`` with the elements where ``where`` holds replaced by ``fn`` of them (in order)."""
    picked = tf.cast(tf.where(where)[:, 0], tf.int32)
    return tf.dynamic_stitch([tf.range(tf.size(strings)), picked], [strings, fn(tf.gather(strings, picked))])


def pack_single_segment(token_ids: tf.RaggedTensor, sequence_length: int, *, start_id: int,
                        end_id: int, pad_id: int) -> dict:
    """``[start] + ids[:L - 2] + [end]``, padded to ``L``: BERT's single-segment packing.

    With one segment, KerasHub's ``round_robin`` and ``waterfall`` truncation agree; this is
    both, without TF Text's ``RoundRobinTrim`` op.

    Returns:
        ``{"token_ids", "segment_ids", "padding_mask"}``, int32 ``[B, sequence_length]``.
    """
    if sequence_length < 2:
        raise ValueError(f"sequence_length must be >= 2 (room for the start and end tokens); received {sequence_length}")
    ids = token_ids[:, : sequence_length - 2]
    n = ids.nrows()
    column = lambda value: tf.fill([n, 1], tf.constant(value, tf.int32))  # noqa: E731
    packed = tf.concat([column(start_id), tf.cast(ids, tf.int32), column(end_id)], axis=1)
    shape = [None, sequence_length]
    return {
        "token_ids": packed.to_tensor(default_value=pad_id, shape=shape),
        "segment_ids": tf.zeros_like(packed).to_tensor(shape=shape),
        "padding_mask": tf.ones_like(packed).to_tensor(shape=shape),
    }
