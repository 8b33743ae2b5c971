"""``build_model``: the fused image + text Keras functional model.

The model is three nested parts, each usable alone:

- ``image_encoder``: ``image`` (raw pixels) -> image features;
- ``text_encoder``: ``token_ids``, ``segment_ids``, ``padding_mask`` -> text features;
- ``fusion_head``: ``{image_features, text_features}`` -> per-branch projection to a common
  width -> fusion -> dropout -> dense head.

so frozen encoders can be run once and cached, and a single modality can be dropped
(``modalities="image"`` or ``"text"``) with the same code.
"""

from __future__ import annotations

import logging

import keras

from tfmm.config import RunConfig
from tfmm.models import heads, pair_heads, text, vision
from tfmm.models.fusion import Fusion

logger = logging.getLogger(__name__)


def build_fusion_head(config: RunConfig, feature_dims: dict) -> keras.Model:
    """Builds the ``fusion_head`` model over per-modality feature vectors.

    Args:
        config: the run config (its ``model`` section is used).
        feature_dims: ``{"image_features": D_i, "text_features": D_t}`` for the modalities used.

    Returns:
        A ``keras.Model`` from that dict of ``[B, D]`` features to the task's scores.
    """
    mc = config.model
    if mc.task in pair_heads.TASK_HEADS:  # matching, contrastive: interaction / dual-encoder heads
        return pair_heads.build_task_head(config, feature_dims)
    inputs = {
        name: keras.Input(shape=(dim,), dtype="float32", name=name)
        for name, dim in feature_dims.items()
    }
    projected = [
        keras.layers.Dense(mc.projection_dim, activation="relu", name=name.replace("features", "projection"))(x)
        for name, x in inputs.items()
    ]
    x = Fusion(mc.fusion, name="fusion")(projected)
    for layer in heads.head_layers(mc.task, mc.num_classes, hidden_dim=mc.hidden_dim, dropout=mc.dropout):
        x = layer(x)
    return keras.Model(inputs, x, name="fusion_head")


def build_model(config: RunConfig) -> keras.Model:
    """Builds the fused model described by ``config``.

    Args:
        config: a :class:`~tfmm.config.RunConfig` whose ``model.num_classes`` is set
            (``tfmm.train`` sets it from the label vocabulary).

    Returns:
        A functional ``keras.Model`` whose inputs are a dict with ``image``
        (``[B, S, S, 3]`` float32 in ``[0, 255]``) and/or ``token_ids``, ``segment_ids``,
        ``padding_mask`` (``[B, L]`` int32), matching the dataset's features.

    Raises:
        ValueError: ``num_classes`` is unset or the task has no dense head.

    Example:
        >>> cfg = RunConfig().replace(model={"num_classes": 3, "image_weights": "none",
        ...                                  "modalities": "image"}, data={"image_size": 32})
        >>> model = build_model(cfg)
    """
    mc, dc = config.model, config.data
    if mc.num_classes <= 0 and mc.task != "contrastive":
        raise ValueError(
            "model.num_classes must be set (> 0) before building; received "
            f"{mc.num_classes}. tfmm.train sets it from the training labels."
        )
    inputs, features = {}, {}
    if mc.uses_image:
        image_encoder = vision.build_image_encoder(
            mc.image_encoder, weights=mc.image_weights, image_size=dc.image_size,
            trainable=not mc.freeze_image,
        )
        inputs["image"] = keras.Input(shape=(dc.image_size, dc.image_size, 3), dtype="float32", name="image")
        features["image_features"] = image_encoder(inputs["image"])
    if mc.uses_text:
        text_encoder = text.build_text_encoder(
            mc.text_encoder, sequence_length=dc.sequence_length, pooling=mc.text_pooling,
            trainable=not mc.freeze_text,
        )
        tokens = text.text_inputs(dc.sequence_length)
        inputs.update(tokens)
        features["text_features"] = text_encoder(tokens)
    head = build_fusion_head(config, {k: v.shape[-1] for k, v in features.items()})
    model = keras.Model(inputs, head(features), name=f"tfmm_{mc.modalities}")
    logger.info(
        "built %s model (%s, fusion=%s): %s parameters, %s trainable",
        mc.task, mc.modalities, mc.fusion, f"{model.count_params():,}",
        f"{sum(int(keras.ops.size(w)) for w in model.trainable_weights):,}",
    )
    return model
