"""``assemble_model``: the fused image + text Keras functional model around a task's head.

The model is three nested parts, each usable alone:

- ``image_encoder``: ``image`` (raw pixels) -> image features;
- ``text_encoder``: ``token_ids``, ``segment_ids``, ``padding_mask`` -> text features;
- ``fusion_head``: ``{image_features, text_features}`` -> per-branch projection to a common
  width -> fusion -> dropout -> dense head.

so frozen encoders can be run once and cached, and a single modality can be dropped
(``modalities="image"`` or ``"text"``) with the same code.

A frozen encoder (``freeze_image`` / ``freeze_text``) is wrapped to ignore the ``training``
flag (:func:`call_encoder`): it runs in inference mode during ``fit`` too (no dropout, BatchNorm on its moving statistics),
so training on cached features and training through the frozen encoder are the same
computation. ``unfreeze_image_blocks`` / ``unfreeze_text_layers`` train only the top blocks
(:mod:`tfmm.models.freezing`). Encoder variables live under the ``image_encoder`` and
``text_encoder`` sub-models (the optimizer's per-encoder learning rate relies on it). The head comes from the task
(``tfmm.tasks``; :func:`tfmm.tasks.build_model` calls this with the task's ``build_head``).
"""

from __future__ import annotations

import logging
from typing import Callable

import keras

from tfmm.config import RunConfig
from tfmm.models import fusion, pair_heads  # noqa: F401  (registers the head layers for load_model)
from tfmm.models import augmentation, dual_encoders, freezing, head_ensemble, hub_vision, text, vision  # noqa: F401  (hub_vision: registers TokenPooling)

logger = logging.getLogger(__name__)


def assemble_model(config: RunConfig, build_head: Callable[[RunConfig, dict], keras.Model]) -> keras.Model:
    """Builds the encoders ``config`` describes and joins them to a head.

    Args:
        config: a :class:`~tfmm.config.RunConfig`.
        build_head: ``(config, {"image_features": D_i, "text_features": D_t}) -> fusion_head``
            model (the task's ``build_head``).

    Returns:
        A functional ``keras.Model`` whose inputs are a dict with ``image``
        (``[B, S, S, 3]`` float32 in ``[0, 255]``) and/or ``token_ids``, ``segment_ids``,
        ``padding_mask`` (``[B, L]`` int32), matching the dataset's features.

    Example:
        >>> cfg = RunConfig().replace(model={"num_classes": 3, "image_weights": "none",
        ...                                  "modalities": "image"}, data={"image_size": 32})
        >>> model = assemble_model(cfg, tfmm.tasks.get_task("classification").build_head)
    """
    head_ensemble.check_supported(config)
    if config.model.encoder:  # one dual encoder (CLIP, SigLIP) gives both encoders, the task its head
        return dual_encoders.build_dual_encoder_model(config, build_head)
    mc, dc = config.model, config.data
    inputs, features = {}, {}
    if mc.uses_image:
        _check_freezing("image", mc.freeze_image, "unfreeze_image_blocks", mc.unfreeze_image_blocks)
        image_encoder = vision.build_image_encoder(
            mc.image_encoder, weights=mc.image_weights, image_size=dc.image_size,
            trainable=not mc.freeze_image,
        )
        if mc.unfreeze_image_blocks:
            freezing.unfreeze_top_blocks(image_encoder, mc.unfreeze_image_blocks, flag="unfreeze_image_blocks")
        inputs["image"] = keras.Input(shape=(dc.image_size, dc.image_size, 3), dtype="float32", name="image")
        augment = augmentation.build_augmentation(mc.augment)  # training only; outside a frozen encoder
        images = augment(inputs["image"]) if augment is not None else inputs["image"]
        features["image_features"] = call_encoder(image_encoder, images, frozen=mc.freeze_image)
    if mc.uses_text:
        _check_freezing("text", mc.freeze_text, "unfreeze_text_layers", mc.unfreeze_text_layers)
        text_encoder = text.build_text_encoder(
            mc.text_encoder, sequence_length=dc.sequence_length, pooling=mc.text_pooling,
            trainable=not mc.freeze_text, dtype=mc.text_dtype, lora_rank=mc.text_lora_rank,
        )
        if mc.unfreeze_text_layers:
            freezing.unfreeze_top_blocks(text_encoder, mc.unfreeze_text_layers, flag="unfreeze_text_layers")
        tokens = text.text_inputs(dc.sequence_length)
        inputs.update(tokens)
        features["text_features"] = call_encoder(text_encoder, tokens, frozen=mc.freeze_text)
    dims = {k: v.shape[-1] for k, v in features.items()}
    if (mc.head_ensemble or 1) > 1:
        head = head_ensemble.build_head_ensemble(config, dims, build_head)
    else:
        head = build_head(config, dims)
    model = keras.Model(inputs, head(features), name=f"tfmm_{mc.modalities}")
    logger.info(
        "built %s model (%s, fusion=%s): %s parameters, %s trainable",
        mc.task, mc.modalities, mc.fusion, f"{model.count_params():,}",
        f"{sum(int(keras.ops.size(w)) for w in model.trainable_weights):,}",
    )
    return model


def call_encoder(encoder: keras.Model, inputs, *, frozen: bool):
    """Calls ``encoder`` on (symbolic) ``inputs``; a frozen one always in inference mode.

    Keras' ``trainable=False`` alone does not stop Dropout inside a frozen backbone from
    dropping during ``fit``, and a ``training=False`` given here would be overridden by the
    outer model's flag; a frozen encoder is therefore wrapped as a
    :class:`~tfmm.models.freezing.InferenceModeModel` (same layers, same name), which runs in
    inference mode whatever flag it gets, also after ``keras.models.load_model``.
    """
    if frozen:
        encoder = freezing.freeze_encoder(encoder)
    return encoder(inputs)


def _check_freezing(branch: str, frozen: bool, flag: str, n: int) -> None:
    if frozen and n:
        raise ValueError(
            f"freeze_{branch}=True and {flag}={n} contradict: freezing keeps the whole {branch} "
            f"encoder fixed, {flag} trains its top {n} blocks. Set one of them."
        )
