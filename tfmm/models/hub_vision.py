"""``--image-encoder keras_hub:PRESET_OR_DIR``: any KerasHub image backbone as the image encoder.

The encoder is ``image`` (raw pixels in ``[0, 255]``) -> the preset's own image converter
(resizing and normalization, inside the model) -> the backbone -> one vector per image:

- a feature map ``[B, H, W, C]`` (ResNet, EfficientNet, MobileNet, ...) is averaged over space;
- a token sequence ``[B, T, D]`` (ViT, DINOv2, ...) gives its class token (the first one)
  when the backbone has one, else the mean over tokens;
- a dict output uses its pooled entry (``pooled_output`` or the like) when there is one.

Example:
    >>> enc = build_hub_image_encoder("resnet_18_imagenet", image_size=224)
    >>> enc.output_shape
    (None, 512)
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import keras

logger = logging.getLogger(__name__)

POOLED_KEYS = ("pooled_output", "pooler_output", "vision_pooled", "image_embeds")


def _source(preset: str) -> str:
    path = os.path.expanduser(preset)
    return os.path.abspath(path) if os.path.exists(path) else preset


def load_backbone(preset: str, *, load_weights: bool = True):
    """``keras_hub.models.Backbone.from_preset`` with an error that says what to pass offline.

    Raises:
        ValueError: the preset could not be loaded (unknown name, no network, not a folder
            with ``config.json``), or it is not an image backbone.
    """
    import keras_hub

    source = _source(preset)
    try:
        backbone = keras_hub.models.Backbone.from_preset(source, load_weights=load_weights)
    except Exception as e:  # unknown names, download failures and bad folders raise many types
        raise ValueError(
            f"could not load KerasHub image backbone {preset!r}: {e}\n"
            "Pass a KerasHub preset name (downloads on first use) or a local preset folder "
            "(written by `backbone.save_to_preset(folder)`), as --image-encoder keras_hub:PRESET_OR_DIR."
        ) from e
    vision = getattr(backbone, "vision_encoder", None)  # CLIP / SigLIP: the vision tower
    if vision is not None:
        backbone = vision
    if len(backbone.inputs) != 1 or len(backbone.inputs[0].shape) != 4:
        raise ValueError(
            f"KerasHub preset {preset!r} is not an image backbone: its inputs are "
            f"{[tuple(i.shape) for i in backbone.inputs]} (an image backbone takes [B, H, W, C])"
        )
    return backbone


def load_image_converter(preset: str):
    """The preset's ``ImageConverter`` (resize + scale/offset), or ``None`` when it has none."""
    import keras_hub

    try:
        return keras_hub.layers.ImageConverter.from_preset(_source(preset))
    except Exception as e:  # no image_converter.json in the folder, or an unknown preset
        logger.warning("KerasHub preset %s has no image converter (%s); scaling pixels to [0, 1]", preset, e)
        return None


@keras.saving.register_keras_serializable(package="tfmm")
class TokenPooling(keras.layers.Layer):
    """One vector per sequence: the first (class) token, or the mean over tokens.

    Args:
        mode: ``"first"`` or ``"mean"``.

    Example:
        >>> TokenPooling("first")(keras.ops.ones((2, 5, 8))).shape
        (2, 8)
    """

    def __init__(self, mode: str = "first", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("first", "mean"):
            raise ValueError(f"mode must be one of ['first', 'mean']; received {mode!r}")
        self.mode = mode

    def call(self, sequence):
        return sequence[:, 0, :] if self.mode == "first" else keras.ops.mean(sequence, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _pool(outputs, backbone):
    if isinstance(outputs, dict):
        for key in POOLED_KEYS:
            if key in outputs:
                return outputs[key]
        keys = sorted(outputs)
        raise ValueError(f"KerasHub backbone {backbone.name!r} returns {keys}; none is a pooled output {list(POOLED_KEYS)}")
    rank = len(outputs.shape)
    if rank == 4:
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(outputs)
    if rank == 3:
        first = getattr(backbone, "use_class_token", True)
        return TokenPooling("first" if first else "mean", name="token_pooling")(outputs)
    if rank == 2:
        return outputs
    raise ValueError(f"KerasHub backbone {backbone.name!r} has an output of rank {rank}; expected 2, 3 or 4")


def build_hub_image_encoder(preset: str, *, weights: Optional[str] = "imagenet", image_size: int = 224,
                            trainable: bool = True) -> keras.Model:
    """Builds ``keras.Model`` named ``image_encoder`` around a KerasHub image backbone.

    Args:
        preset: a KerasHub preset name or a local preset folder.
        weights: as resolved by :func:`tfmm.models.vision.resolve_image_weights`:
            ``"imagenet"`` (the preset's weights), ``None`` (random initialization) or the
            path of a ``.weights.h5`` file of the backbone.
        image_size: side of the square input images (the converter resizes to the
            backbone's size when it has one).
        trainable: ``False`` freezes the backbone.

    Returns:
        A model from ``image`` (``[B, S, S, 3]`` float32 in ``[0, 255]``) to ``[B, D]``.

    Raises:
        ValueError: the preset cannot be loaded or is not an image backbone.

    Example:
        >>> enc = build_hub_image_encoder("/models/tiny_vit", weights=None, image_size=32)
    """
    resolved = weights
    backbone = load_backbone(preset, load_weights=resolved == "imagenet")
    if resolved not in (None, "imagenet"):
        backbone.load_weights(resolved)
    backbone.trainable = trainable
    converter = load_image_converter(preset)
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    if converter is not None:
        x = converter(image)
    else:
        x = keras.layers.Rescaling(1.0 / 255.0, name="image_normalization")(image)
    features = _pool(backbone(x), backbone)
    logger.info(
        "image encoder keras_hub:%s (weights=%s, %dx%d, trainable=%s): %d features",
        preset, resolved or "none", image_size, image_size, trainable, features.shape[-1],
    )
    return keras.Model(image, features, name="image_encoder")
