"""The text preprocessor of a CLIP or SigLIP dual encoder: its own tokenizer, its own packing.

It reproduces what KerasHub's ``CLIPPreprocessor`` / ``SigLIPPreprocessor`` do to a prompt,
as a TensorFlow graph that runs in ``tf.data``, in eager calls and in the serving export alike:

- **CLIP**: ``tf.strings.lower`` -> byte-level BPE (``CLIPTokenizer``) ->
  ``<|startoftext|> ids <|endoftext|>``, padded with id 0. CLIP's text tower pools the
  position of the *largest* token id, so ``<|endoftext|>`` must have the largest id of the
  vocabulary (checked here).
- **SigLIP**: lower case, punctuation removed, whitespace collapsed (big_vision's
  canonicalization) -> SentencePiece (``SigLIPTokenizer``) -> ``ids </s>``, padded with
  ``</s>``. SigLIP's text tower reads the last position, so texts are padded to the tower's
  full length with the end token.

The KerasHub tokenizers called eagerly take a Python path (``tokenizers``) that splits digits
and non-ASCII text differently from their graph path; like
:class:`~tfmm.models.text_backbones.KerasHubTokenizerPreprocessor`, this always runs the graph.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tfmm.models.text_backbones import KerasHubTokenizerPreprocessor, load_hub_tokenizer

# The characters SigLIPPreprocessor removes (big_vision's prompt canonicalization).
_SIGLIP_PUNCTUATION = r"!|\"|#|\$|%|&|\\|'|\(|\)|\*|\+|,|-|\.|/|:|;|<|=|>|\?|@|\[|\\|\]|\^|_|`|{|\||}|~"


def normalize_text(strings: tf.Tensor, family: str) -> tf.Tensor:
    """The text normalization of ``family``'s KerasHub preprocessor (core ops only).

    Example:
        >>> normalize_text(tf.constant(["A Photo, of a CAT!"]), "siglip").numpy()
        array([b'a photo of a cat'], dtype=object)
    """
    if family == "clip":
        return tf.strings.lower(strings)
    strings = tf.strings.lower(strings)
    strings = tf.strings.regex_replace(strings, _SIGLIP_PUNCTUATION, "")
    strings = tf.strings.regex_replace(strings, r"\s+", " ")
    return tf.strings.strip(strings)


class DualEncoderTextPreprocessor(KerasHubTokenizerPreprocessor):
    """Strings -> ``{token_ids, segment_ids, padding_mask}`` for a CLIP or SigLIP text tower.

    Args:
        tokenizer: a ``CLIPTokenizer`` / ``SigLIPTokenizer``, or a folder holding one (a preset,
            or the ``tokenizer/`` folder of a run).
        sequence_length: tokens per text (special tokens included).
        family: ``clip`` or ``siglip``.

    Raises:
        ValueError: a CLIP vocabulary whose ``<|endoftext|>`` is not its largest id.

    Example:
        >>> pre = DualEncoderTextPreprocessor("path/to/clip_preset", 77, "clip")  # doctest: +SKIP
        >>> pre(tf.constant(["a photo of a cat"]))["token_ids"].shape
        TensorShape([1, 77])
    """

    def __init__(self, tokenizer, sequence_length: int, family: str):
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_hub_tokenizer(os.fspath(tokenizer))
        super().__init__(tokenizer, sequence_length)
        self.family = family
        if family == "clip":
            largest = int(tokenizer.vocabulary_size()) - 1
            if self.end_id != largest:
                raise ValueError(
                    f"CLIP's text tower pools the position of the largest token id, which must be "
                    f"<|endoftext|>; this tokenizer's <|endoftext|> is id {self.end_id}, its largest id is "
                    f"{largest}: put <|endoftext|> last in the vocabulary"
                )

    def _tokenize(self, strings):
        return super()._tokenize(normalize_text(strings, self.family))
