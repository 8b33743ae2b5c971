"""A light text encoder trained from scratch: hashed words and character n-grams, embedded, averaged.

``--text-encoder embedding-bag`` is the fastText / bag-of-embeddings family: each text
becomes the ids of its words followed by the ids of its words' character n-grams (``<word>``
with boundary marks, widths 3 by default), an ``Embedding`` looks them up and a masked mean
pools them. No pretrained weights, a few million parameters, an epoch in seconds on CPU.

Ids (0 is padding):

- ``1 .. max_words``: the words of an adapted vocabulary (:meth:`EmbeddingBagPreprocessor.adapt`
  on the training texts: the most frequent words, each with its own vector);
- ``max_words + 1 .. max_words + buckets``: every other word and every n-gram, hashed
  (``tf.strings.to_hash_bucket_fast``, FarmHash Fingerprint64: stable across processes and
  versions), so unseen, misspelt and non-English words still map to the vectors of their
  n-grams.

The id space is fixed by the constants below, so the model is built before the vocabulary is
adapted. Tokenizing uses TensorFlow core ops only (``tf.strings``, ``tf.lookup``), in the
``tf.data`` pipeline and in the serving export alike.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Iterable

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

SPEC = "embedding-bag"
SAVED_CONFIG = "embedding_bag.json"
MAX_WORDS = 8192
BUCKETS = 32768
EMBEDDING_DIM = 64
NGRAM_WIDTHS = (3,)
# Punctuation and symbols become spaces; letters of every script, digits and marks stay.
_SEPARATORS = r"[\p{P}\p{S}\s]+"


def vocabulary_size() -> int:
    """The number of ids (padding included): the ``Embedding``'s ``input_dim``."""
    return 1 + MAX_WORDS + BUCKETS


class HashedNgramTokenizer(tf.Module):
    """Strings -> ragged ids: words first (adapted ids or hashed), then their character n-grams.

    Args:
        vocabulary: list of str. Words with their own id (``1 + index``); at most ``MAX_WORDS``.
        ngram_widths: tuple of int. Character n-gram widths (of ``<word>``).

    Example:
        >>> tok = HashedNgramTokenizer(["red"])
        >>> tok(tf.constant(["Red cats"])).to_list()[0][0]
        1
    """

    lowercase = True

    def __init__(self, vocabulary: Iterable[str] = (), ngram_widths=NGRAM_WIDTHS, name=None):
        super().__init__(name=name or "hashed_ngram_tokenizer")
        vocabulary = [str(w) for w in vocabulary]
        if len(vocabulary) > MAX_WORDS:
            raise ValueError(f"vocabulary must have at most {MAX_WORDS} words; received {len(vocabulary)}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary has duplicate words")
        self.vocabulary = vocabulary
        self.ngram_widths = tuple(int(n) for n in ngram_widths)
        keys = tf.constant(vocabulary or [""], tf.string)
        values = tf.constant(np.arange(1, len(vocabulary) + 1) if vocabulary else [-1], tf.int64)
        self._words = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), -1)

    def get_vocabulary(self) -> list:
        """The adapted words, then a line naming the hashing (so a cache key sees both)."""
        return list(self.vocabulary) + [f"#hashed buckets={BUCKETS} max_words={MAX_WORDS} ngrams={self.ngram_widths}"]

    def words(self, text) -> tf.RaggedTensor:
        """``[B]`` strings -> ragged ``[B, None]`` words (Unicode lowercased, split on punctuation)."""
        text = tf.strings.lower(tf.reshape(tf.convert_to_tensor(text, tf.string), [-1]), encoding="utf-8")
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        words = tf.strings.split(tf.strings.strip(tf.strings.regex_replace(text, _SEPARATORS, " ")), sep=" ")
        return tf.ragged.boolean_mask(words, words != "")

    def _hashed(self, strings, prefix: str):
        return tf.strings.to_hash_bucket_fast(tf.strings.join([prefix, strings]), BUCKETS) + (1 + MAX_WORDS)

    def tokenize(self, text) -> tf.RaggedTensor:
        """``[B]`` strings -> ragged ``[B, None]`` int32 ids: word ids, then n-gram ids."""
        words = self.words(text)
        flat = words.flat_values
        known = self._words.lookup(flat)
        word_ids = words.with_flat_values(tf.where(known > 0, known, self._hashed(flat, "w:")))
        chars = tf.strings.unicode_split(tf.strings.join(["<", flat, ">"]), "UTF-8")
        grams = tf.concat([tf.strings.ngrams(chars, n, separator="") for n in self.ngram_widths], axis=1)
        # Each word's n-grams, regrouped by the text the word is in.
        per_text = tf.RaggedTensor.from_value_rowids(
            self._hashed(grams.flat_values, "g:"),
            tf.gather(words.value_rowids(), grams.value_rowids()), nrows=words.nrows())
        return tf.cast(tf.concat([word_ids, per_text], axis=1), tf.int32)

    def __call__(self, text) -> tf.RaggedTensor:
        return self.tokenize(text)


class EmbeddingBagPreprocessor(tf.Module):
    """Strings -> ``{token_ids, segment_ids, padding_mask}`` for the embedding-bag encoder.

    ``token_ids`` are the first ``sequence_length`` ids of :class:`HashedNgramTokenizer`
    (word ids first, so long texts drop n-grams before words), right-padded with 0.

    Args:
        sequence_length: ids kept per text.
        vocabulary: words with their own id (see :meth:`adapt`).
        ngram_widths: character n-gram widths.

    Example:
        >>> pre = EmbeddingBagPreprocessor(16)
        >>> pre.adapt(["a red circle", "a blue square"])
        >>> pre(tf.constant(["a red circle"]))["padding_mask"].numpy().sum()
        13
    """

    def __init__(self, sequence_length: int, vocabulary: Iterable[str] = (), ngram_widths=NGRAM_WIDTHS):
        super().__init__(name="text_preprocessor")
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1; received {sequence_length}")
        self.sequence_length = int(sequence_length)
        self.tokenizer = HashedNgramTokenizer(vocabulary, ngram_widths)

    def adapt(self, texts: Iterable[str], *, min_count: int = 2) -> None:
        """Gives the most frequent words of ``texts`` (seen ``min_count`` times or more, at most
        ``MAX_WORDS``) their own ids; every other word stays hashed.

        Args:
            texts: iterable of str. The training texts.
            min_count: int. The fewest occurrences for a word of its own.
        """
        counts = collections.Counter()
        texts = [str(t) for t in texts]
        for start in range(0, len(texts), 1024):
            for row in self.tokenizer.words(tf.constant(texts[start:start + 1024])).to_list():
                counts.update(w.decode("utf-8") for w in row)
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.tokenizer = HashedNgramTokenizer(ranked[:MAX_WORDS], self.tokenizer.ngram_widths)
        logger.info("embedding-bag: %d words of their own (of %d distinct), the rest hashed into %d buckets",
                    len(self.tokenizer.vocabulary), len(counts), BUCKETS)

    def __call__(self, strings):
        strings = tf.convert_to_tensor(strings, tf.string)
        scalar = strings.shape.rank == 0
        ids = self.tokenizer.tokenize(tf.reshape(strings, [-1]))[:, : self.sequence_length]
        shape = [None, self.sequence_length]
        packed = {
            "token_ids": ids.to_tensor(default_value=0, shape=shape),
            "segment_ids": tf.zeros_like(ids).to_tensor(shape=shape),
            "padding_mask": tf.ones_like(ids).to_tensor(shape=shape),
        }
        return {k: v[0] if scalar else v for k, v in packed.items()}

    def save(self, folder: str) -> None:
        """Writes ``embedding_bag.json`` (the adapted words and the hashing), to rebuild it from the run."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, SAVED_CONFIG), "w", encoding="utf-8") as f:
            json.dump({"vocabulary": self.tokenizer.vocabulary, "ngram_widths": list(self.tokenizer.ngram_widths),
                       "max_words": MAX_WORDS, "buckets": BUCKETS}, f, ensure_ascii=False)

    @classmethod
    def load(cls, folder: str, sequence_length: int) -> "EmbeddingBagPreprocessor":
        """The preprocessor :meth:`save` wrote to ``folder``.

        Raises:
            ValueError: the folder was written with another id space (``max_words``, ``buckets``).
        """
        path = os.path.join(folder, SAVED_CONFIG)
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if (saved.get("max_words"), saved.get("buckets")) != (MAX_WORDS, BUCKETS):
            raise ValueError(f"{path}: written for max_words={saved.get('max_words')}, buckets={saved.get('buckets')}; "
                             f"this tfmm uses max_words={MAX_WORDS}, buckets={BUCKETS}")
        return cls(sequence_length, saved["vocabulary"], saved.get("ngram_widths", NGRAM_WIDTHS))


def build_embedding_bag(inputs: dict, *, trainable: bool = True, dim: int = EMBEDDING_DIM):
    """Token vectors of ``inputs["token_ids"]``: a ``[B, L, dim]`` tensor (pool it with the mask)."""
    import keras

    embedding = keras.layers.Embedding(vocabulary_size(), dim, name="embedding_bag")
    embedding.trainable = trainable
    return embedding(inputs["token_ids"])
