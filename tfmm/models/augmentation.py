"""Image augmentation (``--augment light|strong``): Keras preprocessing layers in the image branch.

:class:`ImageAugmentation` sits between the model's ``image`` input and the ``image_encoder``
(outside a frozen encoder's inference-mode wrapper), so it acts on raw ``[0, 255]`` pixels:

- ``light``: horizontal flip, a small zoom in (up to 10%, like a random crop), contrast +-10%;
- ``strong``: horizontal flip, rotation up to +-15 degrees, zoom +-20%, translation up to 10%,
  contrast +-30%.

It changes images only when called with ``training=True`` (``fit``); called in inference mode or
without a flag (``predict``, ``evaluate``, a bare ``model(x)``, the serving signature) it
returns its input unchanged, so exported graphs and predictions are those of the same model
without it. A frozen encoder's features then differ every epoch, so they are not cached
(see :func:`tfmm.training.feature_cache.cached_modalities`), unless ``--feature-views N`` turns
the augmentation into N cached augmented copies of each training image
(:func:`tfmm.training.feature_views.cached_view_features`).
"""

from __future__ import annotations

import keras

LAYER_NAME = "image_augmentation"


def _light(seed):
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomZoom(height_factor=(-0.1, 0.0), seed=seed),  # zoom in only: a crop
        keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed),
    ]


def _strong(seed):
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(15.0 / 360.0, seed=seed),  # a fraction of a full turn
        keras.layers.RandomZoom(0.2, seed=seed),
        keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
        keras.layers.RandomContrast(0.3, value_range=(0, 255), seed=seed),
    ]


# mode -> builder of its layers, applied in order
AUGMENTATIONS = {"light": _light, "strong": _strong}


@keras.saving.register_keras_serializable(package="tfmm")
class ImageAugmentation(keras.layers.Layer):
    """Random image augmentation in training only (identity otherwise).

    Args:
        mode: ``"light"`` or ``"strong"`` (see the module docstring).
        seed: optional seed of the random layers (``None``: from Keras' global seed).

    Raises:
        ValueError: an unknown ``mode``.

    Example:
        >>> augment = ImageAugmentation("light")
        >>> images = keras.ops.ones((2, 32, 32, 3)) * 128.0
        >>> augment(images, training=True).shape
        (2, 32, 32, 3)
    """

    def __init__(self, mode: str = "light", seed=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {['none', *AUGMENTATIONS]}; received {mode!r}")
        self.mode = mode
        self.seed = seed
        self.augmentations = AUGMENTATIONS[mode](seed)
        self.supports_jit = False  # the geometric layers use ops XLA does not compile

    def build(self, input_shape):
        for layer in self.augmentations:
            layer.build(input_shape)
        self.built = True

    def call(self, images, training=None):
        if not training:  # None (a bare call) counts as inference, unlike the Keras layers' default
            return images
        for layer in self.augmentations:
            images = layer(images, training=True)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "seed": self.seed}


def build_augmentation(mode: str, name: str = LAYER_NAME):
    """The augmentation layer for ``model.augment``, or ``None`` for ``"none"``."""
    if mode == "none":
        return None
    return ImageAugmentation(mode, name=name)

