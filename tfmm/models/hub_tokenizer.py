"""The core-op tokenizer of a ``tfmm hub-export`` TF-Hub preprocessor folder.

A preprocessor written by ``tfmm hub-export`` records its vocabulary
(``preprocess/assets/vocab.txt``) and tokenizer options (``export_info.json``, one folder
up); :func:`core_op_preprocessor` rebuilds it as a
:class:`tfmm.models.wordpiece_preprocessor.KerasHubTextPreprocessor` (TensorFlow core ops
only, the same ids). :mod:`tfmm.models.hub` uses it for ``tfhub:`` specs and
:mod:`tfmm.models.hub_export` writes the record; this module imports neither.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)

# ``export_info.json`` of a ``tfmm hub-export`` folder (one folder above ``preprocess/``).
EXPORT_FORMAT = "TF-Hub BERT (Common SavedModel APIs for Text)"
EXPORT_INFO = "export_info.json"
# What exports written before these keys were recorded used (KerasHub BertTokenizer defaults).
_EXPORT_DEFAULTS = {"split_on_cjk": True, "suffix_indicator": "##", "oov_token": "[UNK]"}


def _normalize_handle(handle: str) -> str:
    """Returns an absolute path for an existing local folder, the handle unchanged otherwise."""
    handle = os.fspath(handle)
    if "://" not in handle and os.path.isdir(handle):
        return os.path.abspath(handle)
    return handle


def _tfmm_export_info(preprocessor_handle: str):
    """``(info, vocab_file)`` of a preprocessor written by ``tfmm hub-export``, or
    ``(None, reason)`` when the handle is not one (a URL, another layout or format)."""
    handle = _normalize_handle(preprocessor_handle)
    if "://" in handle or not os.path.isdir(handle):
        return None, "it is not a local folder"
    vocab_file = os.path.join(handle, "assets", "vocab.txt")
    info_file = os.path.join(os.path.dirname(handle), EXPORT_INFO)
    if not os.path.isfile(vocab_file) or not os.path.isfile(info_file):
        return None, f"it has no assets/vocab.txt with an {EXPORT_INFO} one folder up"
    try:
        with open(info_file, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as error:
        return None, f"{info_file} could not be read ({error})"
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT or not all(
        isinstance(info.get(key), bool) for key in ("lowercase", "strip_accents")
    ):
        return None, f"{info_file} is not a tfmm hub-export record (format, lowercase, strip_accents)"
    return {**_EXPORT_DEFAULTS, **info}, vocab_file


def core_op_preprocessor(preprocessor_handle: str, seq_length: Optional[int] = None):
    """The core-op preprocessor of a ``tfmm hub-export`` preprocessor folder, or None.

    A preprocessor written by ``tfmm hub-export`` records its vocabulary
    (``preprocess/assets/vocab.txt``) and tokenizer options (``export_info.json``, one folder
    up), so tfmm rebuilds it with :class:`tfmm.data.tokenizer.WordPieceTokenizer` (TensorFlow core
    ops only), with the very ids of the SavedModel's own ``__call__`` and
    ``tokenize`` + ``bert_pack_inputs`` (one segment). Exports written before
    ``split_on_cjk``, ``suffix_indicator``, ``oov_token`` and ``special_tokens`` were recorded
    take KerasHub's defaults (``True``, ``##``, ``[UNK]``, the ids of ``[CLS]``/``[SEP]``/``[PAD]``).

    Args:
        preprocessor_handle: str. A TF-Hub preprocessor handle (URL or local folder).
        seq_length: int or None. Output length; None is the export's own ``seq_length``.

    Returns:
        A :class:`tfmm.models.wordpiece_preprocessor.KerasHubTextPreprocessor` (strings -> ``token_ids``,
        ``segment_ids``, ``padding_mask``), or None when the handle is not a tfmm export
        tfmm can read (the reason is logged at DEBUG).

    Raises:
        ValueError: ``seq_length`` is not None or an int >= 3.

    Example:
        >>> pre = core_op_preprocessor("hub_bert/preprocess", 64)  # doctest: +SKIP
    """
    from tfmm.models import wordpiece_preprocessor as text

    if seq_length is not None and (isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 3):
        raise ValueError(
            f"seq_length must be None or an int >= 3 (room for [CLS], one token, [SEP]); received {seq_length!r}"
        )
    info, vocab_file = _tfmm_export_info(preprocessor_handle)
    if info is None:
        logger.debug("%s: no core-op tokenizer, %s", preprocessor_handle, vocab_file)
        return None
    options = {key: info[key] for key in text.DEFAULT_TOKENIZER_OPTIONS}
    if (info["suffix_indicator"], info["oov_token"]) != ("##", "[UNK]") or not isinstance(options["split_on_cjk"], bool):
        logger.debug("%s: no core-op tokenizer, options %s", preprocessor_handle, info)
        return None
    try:
        preprocessor = text.KerasHubTextPreprocessor.from_vocabulary(
            text.read_vocabulary(vocab_file), int(seq_length or info["seq_length"]), **options)
    except (ValueError, KeyError, TypeError) as error:  # no [CLS]/[SEP]/[PAD], duplicates...
        logger.debug("%s: no core-op tokenizer (%s)", preprocessor_handle, error)
        return None
    # The preprocessor packs with the ids of [CLS], [SEP], [PAD]: the export must have used them.
    vocabulary = preprocessor.tokenizer.vocabulary
    special = info.get("special_tokens") or {}
    tokens = {"start_of_sequence_id": "[CLS]", "end_of_segment_id": "[SEP]", "padding_id": "[PAD]"}
    if info.get("vocabulary_size", len(vocabulary)) != len(vocabulary) or any(
        special.get(key, vocabulary.index(token)) != vocabulary.index(token) for key, token in tokens.items()
    ):
        logger.debug("%s: no core-op tokenizer, the vocabulary does not match %s", preprocessor_handle, EXPORT_INFO)
        return None
    return preprocessor
