"""TF-Hub BERT text encoders for Keras 3, and export of KerasHub BERT models to TF-Hub format.

Two jobs, one interface (the TF-Hub "Common SavedModel APIs for Text", BERT flavour):

* **Use** a TF-Hub BERT pair inside a Keras 3 model: :class:`HubTextPreprocessor` turns strings
  into token ids (in ``tf.data``), :class:`HubTextEncoder` is a Keras layer running the encoder
  SavedModel, fine-tunable, usable in functional models and under ``MirroredStrategy``.
  ``tensorflow_hub.KerasLayer`` is not used: it is a Keras 2 layer and fails in Keras 3
  functional models (see PITFALLS.md, "TF-Hub inside Keras 3").
* **Write** such a pair from a KerasHub ``BertBackbone`` + ``BertTokenizer``: see
  :mod:`tfmm.hub_export`. :func:`text_preprocessor` (what ``--text-encoder tfhub:`` uses)
  tokenizes a preprocessor written that way with TensorFlow core ops
  (:func:`tfmm.models.hub_tokenizer.core_op_preprocessor`, same ids) and runs any other one as it is.

A *handle* is a TF-Hub/Kaggle URL (downloaded and cached under ``TFHUB_CACHE_DIR``) or a local
SavedModel folder. Loading needs ``tensorflow_text`` for the preprocessor's ops; this module
imports it before every load.

Key names: the TF-Hub interface uses ``input_word_ids`` / ``input_type_ids`` / ``input_mask``;
tfmm's canonical names are ``token_ids`` / ``segment_ids`` / ``padding_mask``
(:func:`hub_inputs_from_canonical` maps one to the other).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from tfmm.models.hub_tokenizer import _normalize_handle

logger = logging.getLogger(__name__)

HUB_INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
CANONICAL_TO_HUB = {
    "token_ids": "input_word_ids",
    "segment_ids": "input_type_ids",
    "padding_mask": "input_mask",
}
_LOGGED_TF_TEXT = set()  # preprocessor handles already reported as keeping TF Text ops
_OFFLINE_HINT = (
    "Downloading a TF-Hub handle needs internet access, which this machine may not have. "
    "Pass a local SavedModel folder instead (e.g. one written by `tfmm hub-export`), or set "
    "TFHUB_CACHE_DIR to a cache folder that already holds this handle."
)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


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


def text_preprocessor(preprocessor_handle: str, seq_length: Optional[int] = None):
    """The tfmm preprocessor of a TF-Hub BERT preprocessor handle: core ops when possible.

    A ``tfmm hub-export`` folder gets :func:`tfmm.models.hub_tokenizer.core_op_preprocessor` (core ops only,
    same ids); any other preprocessor (a TF-Hub URL, one made with TF Text's
    ``BertTokenizer``...) is run as it is by :class:`HubTextPreprocessor`, so its TF Text ops
    stay in the serving export; this is logged once per handle, at INFO.

    Args:
        preprocessor_handle: str. TF-Hub URL or local folder of a BERT preprocessor.
        seq_length: int or None. Output length; None is the preprocessor's default.

    Returns:
        A callable ``tf.Module``: strings -> ``token_ids``, ``segment_ids``, ``padding_mask``.

    Example:
        >>> pre = text_preprocessor("hub_bert/preprocess", 64)  # doctest: +SKIP
    """
    from tfmm.models.hub_tokenizer import core_op_preprocessor

    preprocessor = core_op_preprocessor(preprocessor_handle, seq_length)
    if preprocessor is not None:
        logger.info("TF-Hub preprocessor %s: tokenizing with TensorFlow core ops (tfmm hub-export "
                    "vocabulary and options)", preprocessor_handle)
        return preprocessor
    preprocessor = HubTextPreprocessor(preprocessor_handle, seq_length=seq_length)
    if preprocessor.preprocessor_handle not in _LOGGED_TF_TEXT:
        _LOGGED_TF_TEXT.add(preprocessor.preprocessor_handle)
        logger.info(
            "TF-Hub preprocessor %s is not a `tfmm hub-export` folder whose vocabulary and options "
            "tfmm can read: this text encoder keeps its TF Text ops (in tf.data and in the serving "
            "export); the export says which TF Serving releases load it",
            preprocessor.preprocessor_handle,
        )
    return preprocessor


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
