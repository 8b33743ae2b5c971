"""One KerasHub dual encoder (CLIP, SigLIP) as both branches of a tfmm model.

``--encoder clip:PRESET_OR_DIR`` / ``siglip:PRESET_OR_DIR`` (``ModelConfig.encoder``) loads a
``keras_hub.models.CLIPBackbone`` / ``SigLIPBackbone`` with ``from_preset`` (a preset name or a
local preset folder), its image converter and its tokenizer, and splits it into the two
encoders every tfmm model is made of:

- ``image_encoder``: ``image`` (``[B, S, S, 3]`` float32 in ``[0, 255]``) -> the model's
  image converter (resize, rescale, normalize: in the graph, so exports need nothing else)
  -> the vision tower -> ``[B, D]`` (CLIP: pooled and projected; SigLIP: its attention-pooling head);
- ``text_encoder``: ``{token_ids, segment_ids, padding_mask}`` -> the text tower -> ``[B, D]``
  (CLIP pools the end token, SigLIP the last position); tokens come from
  :class:`~tfmm.models.dual_encoder_text.DualEncoderTextPreprocessor`.

Both give the backbone's own embeddings (the space the two towers share), so every task's
head sits on them unchanged: classification, multilabel and matching fuse the two as with
separate encoders; ``contrastive`` keeps the space and fine-tunes with the model's own loss
and logit scale (:mod:`tfmm.models.dual_encoder_heads`); zero-shot and retrieval use the
towers directly (:mod:`tfmm.tasks.zero_shot`).

Example:
    >>> backbone = load_backbone(parse_encoder_spec("clip:path/to/clip_preset"))  # doctest: +SKIP
    >>> image_tower = build_image_tower(backbone, load_image_converter(...), image_size=224)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import keras

from tfmm.models import freezing
from tfmm.models.dual_encoder_heads import SigmoidSimilarity
from tfmm.models.dual_encoder_text import DualEncoderTextPreprocessor
from tfmm.models.inputs import text_inputs

logger = logging.getLogger(__name__)

FAMILIES = {"clip": "CLIPBackbone", "siglip": "SigLIPBackbone"}  # spec prefix -> KerasHub class


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """A parsed ``--encoder`` value: ``family`` (``clip``/``siglip``) and a preset name or folder."""

    family: str
    source: str


def is_encoder_spec(spec) -> bool:
    """Whether ``spec`` names a dual encoder (``clip:...`` or ``siglip:...``)."""
    return isinstance(spec, str) and any(spec.startswith(f"{family}:") for family in FAMILIES)


def parse_encoder_spec(spec: str) -> EncoderSpec:
    """Parses ``clip:PRESET_OR_DIR`` / ``siglip:PRESET_OR_DIR`` (a folder becomes absolute).

    Raises:
        ValueError: another form.

    Example:
        >>> parse_encoder_spec("clip:clip_vit_base_patch32")
        EncoderSpec(family='clip', source='clip_vit_base_patch32')
    """
    family, _, source = (spec or "").strip().partition(":")
    if family not in FAMILIES or not source:
        raise ValueError(f"encoder must be 'clip:PRESET_OR_DIR' or 'siglip:PRESET_OR_DIR' (a KerasHub preset name "
                         f"or a local preset folder); received {spec!r}")
    if os.path.exists(os.path.expanduser(source)):
        source = os.path.abspath(os.path.expanduser(source))
    return EncoderSpec(family, source)


def _load(cls, spec: EncoderSpec, what: str):
    try:
        return cls.from_preset(spec.source)
    except Exception as e:
        where = f"folder {spec.source!r}" if os.path.isdir(spec.source) else f"KerasHub preset {spec.source!r}"
        raise ValueError(
            f"could not load the {what} of {spec.family} {where}: {e}\n"
            "Presets are downloaded from Kaggle/Hugging Face, which this machine may not reach: pass a local "
            f"folder instead ('{spec.family}:/path/to/preset' holding config.json, model.weights.h5, "
            "tokenizer.json and image_converter.json, as written by `backbone.save_to_preset(dir)`, "
            "`tokenizer.save_to_preset(dir)` and `image_converter.save_to_preset(dir)`)."
        ) from e


def load_backbone(spec: EncoderSpec):
    """The ``CLIPBackbone`` / ``SigLIPBackbone`` of ``spec``.

    Raises:
        ValueError: it cannot be loaded (the message names a local folder as the way out), or
            the preset holds another kind of backbone.
    """
    import keras_hub

    expected = getattr(keras_hub.models, FAMILIES[spec.family])
    backbone = _load(keras_hub.models.Backbone, spec, "backbone")
    if not isinstance(backbone, expected):
        raise ValueError(f"encoder '{spec.family}:{spec.source}' holds a {type(backbone).__name__}, not a "
                         f"{expected.__name__}; use the prefix of its family ({', '.join(FAMILIES)})")
    return backbone


def load_image_converter(spec: EncoderSpec):
    """The preset's image converter (``CLIPImageConverter`` / ``SigLIPImageConverter``)."""
    import keras_hub

    return _load(keras_hub.layers.ImageConverter, spec, "image converter (image_converter.json)")


def text_preprocessor(spec: str, sequence_length: int, *, saved_tokenizer: str = None):
    """The :class:`DualEncoderTextPreprocessor` of ``spec`` (or of a run's saved ``tokenizer/``)."""
    parsed = parse_encoder_spec(spec)
    source = saved_tokenizer or parsed.source
    from tfmm.models.text_backbones import load_hub_tokenizer

    try:
        tokenizer = load_hub_tokenizer(source)
    except ValueError as e:
        raise ValueError(f"could not load the tokenizer of encoder {spec!r}: {e}") from e
    return DualEncoderTextPreprocessor(tokenizer, sequence_length, parsed.family)


def tower_sizes(backbone) -> dict:
    """``{"image_size": S, "sequence_length": L}``: the towers' own input sizes."""
    return {"image_size": int(backbone.vision_encoder.image_shape[0]),
            "sequence_length": int(backbone.text_encoder.max_sequence_length)}


def preset_tower_sizes(spec: EncoderSpec) -> dict:
    """:func:`tower_sizes` of a preset, read from a local folder's ``config.json`` without
    loading the weights (a preset name: from the loaded backbone)."""
    config_file = os.path.join(spec.source, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            towers = json.load(f).get("config", {})
        try:
            return {"image_size": int(towers["vision_encoder"]["config"]["image_shape"][0]),
                    "sequence_length": int(towers["text_encoder"]["config"]["max_sequence_length"])}
        except (KeyError, TypeError, IndexError):
            pass  # not a dual encoder's config: load_backbone says what it is
    return tower_sizes(load_backbone(spec))


def build_image_tower(backbone, converter, image_size: int, *, trainable: bool = True) -> keras.Model:
    """``image_encoder``: ``[B, S, S, 3]`` pixels in ``[0, 255]`` -> converter -> vision tower -> ``[B, D]``."""
    backbone.vision_encoder.trainable = trainable
    for name in ("vision_pooler", "vision_projection"):  # CLIP's; SigLIP pools inside its tower
        if hasattr(backbone, name):
            getattr(backbone, name).trainable = trainable
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    return keras.Model(image, backbone.get_vision_embeddings(converter(image)), name="image_encoder")


def build_text_tower(backbone, family: str, sequence_length: int, *, trainable: bool = True) -> keras.Model:
    """``text_encoder``: ``{token_ids, segment_ids, padding_mask}`` -> text tower -> ``[B, D]``.

    The towers read ``token_ids`` only: CLIP attends causally and pools the end token (padding
    after it changes nothing); SigLIP reads the last position of a text padded with its end token.

    Raises:
        ValueError: ``sequence_length`` exceeds the tower's positions, or (SigLIP) differs from them.
    """
    limit = tower_sizes(backbone)["sequence_length"]
    if sequence_length > limit or (family == "siglip" and sequence_length != limit):
        allowed = f"<= {limit}" if family == "clip" else f"exactly {limit} (its text tower reads the last position)"
        raise ValueError(f"sequence_length must be {allowed} for this {family} encoder; received "
                         f"{sequence_length}: pass --sequence-length {limit}")
    backbone.text_encoder.trainable = trainable
    for name in ("text_pooler", "text_projection"):
        if hasattr(backbone, name):
            getattr(backbone, name).trainable = trainable

    inputs = text_inputs(sequence_length)
    return keras.Model(inputs, backbone.get_text_embeddings(inputs["token_ids"]), name="text_encoder")


def logit_parameters(backbone) -> tuple:
    """``(logit_scale, logit_bias or None)`` of the backbone's own head (floats, log-scale first)."""
    head = next(layer for layer in backbone.layers if hasattr(layer, "logit_scale"))
    bias = getattr(head, "logit_bias", None)
    scale = float(keras.ops.convert_to_numpy(head.logit_scale))
    return scale, None if bias is None else float(keras.ops.convert_to_numpy(bias))


def copy_logit_parameters(head: keras.Model, backbone) -> None:
    """Starts a head's ``similarity`` layer (when it has one) at the backbone's scale and bias."""
    if not any(layer.name == "similarity" for layer in head.layers):
        return
    similarity = head.get_layer("similarity")
    scale, bias = logit_parameters(backbone)
    similarity.max_scale = max(similarity.max_scale, math.exp(scale))  # keep the trained scale reachable
    similarity.logit_scale.assign(scale)
    if isinstance(similarity, SigmoidSimilarity) and bias is not None:
        similarity.logit_bias.assign(bias)


def build_dual_encoder_model(config, build_head) -> keras.Model:
    """The model of a run with ``config.model.encoder`` set: the two towers and the task's head.

    Args:
        config: a :class:`~tfmm.config.RunConfig` (``model.encoder``, ``modalities``,
            ``freeze_image`` / ``freeze_text``, ``data.image_size`` / ``sequence_length``).
        build_head: the task's ``(config, feature_dims) -> fusion_head``.

    Returns:
        A functional ``keras.Model`` with the inputs of :func:`tfmm.models.build.assemble_model`.

    Raises:
        ValueError: an option that applies to separate encoders only (``unfreeze_*``,
            ``text_dtype``, ``text_lora_rank``), or sizes the towers do not take.
    """

    mc, dc = config.model, config.data
    _check_options(mc)
    spec = parse_encoder_spec(mc.encoder)
    backbone = load_backbone(spec)
    inputs, features = {}, {}
    if mc.uses_image:
        tower = build_image_tower(backbone, load_image_converter(spec), dc.image_size, trainable=not mc.freeze_image)
        inputs["image"] = keras.Input(shape=(dc.image_size, dc.image_size, 3), dtype="float32", name="image")
        features["image_features"] = _call(tower, inputs["image"], mc.freeze_image)
    if mc.uses_text:
        tower = build_text_tower(backbone, spec.family, dc.sequence_length, trainable=not mc.freeze_text)
        tokens = text_inputs(dc.sequence_length)
        inputs.update(tokens)
        features["text_features"] = _call(tower, tokens, mc.freeze_text)
    head = build_head(config, {k: v.shape[-1] for k, v in features.items()})
    copy_logit_parameters(head, backbone)
    model = keras.Model(inputs, head(features), name=f"tfmm_{spec.family}_{mc.modalities}")
    logger.info("built %s model on %s encoder %s (%s): %s parameters", mc.task, spec.family, spec.source,
                mc.modalities, f"{model.count_params():,}")
    return model


def _call(tower: keras.Model, inputs, frozen: bool):
    return (freezing.freeze_encoder(tower) if frozen else tower)(inputs)


def _check_options(mc) -> None:
    unsupported = {"unfreeze_image_blocks": mc.unfreeze_image_blocks, "unfreeze_text_layers": mc.unfreeze_text_layers,
                   "text_lora_rank": mc.text_lora_rank}
    given = {k: v for k, v in unsupported.items() if v} | ({"text_dtype": mc.text_dtype}
                                                          if mc.text_dtype != "float32" else {})
    if given:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())} apply to separate image/text "
                         f"encoders, not to encoder {mc.encoder!r}: drop them, or train the whole dual "
                         "encoder (default) or freeze a tower (freeze_image / freeze_text)")
