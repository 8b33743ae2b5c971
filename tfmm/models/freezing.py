"""Partial fine-tuning: train only an encoder's top N blocks, the rest frozen in inference mode.

``--unfreeze-image-blocks N`` / ``--unfreeze-text-layers N`` call :func:`unfreeze_top_blocks`
on the built ``image_encoder`` / ``text_encoder``. A *block* is

- a transformer layer of a KerasHub backbone (``backbone.transformer_layers``: BERT, MiniLM
  and the other text backbones; ``encoder_layers`` of a ViT);
- a stage of a convolutional backbone, found from its layer names: ``block5_*`` (VGG,
  Xception, EfficientNet, EfficientNet-Lite: ``block6a_``, ``block6b_`` are stage ``block6``),
  ``conv4_block*`` (ResNet, DenseNet), ``stack2_block*`` (KerasHub ResNet), ``block_12_*`` /
  ``expanded_conv_*`` (MobileNetV2/V3), ``*_stage_2_block_*`` (ConvNeXt).

Everything below the top N blocks (stem, embeddings, lower blocks) gets ``trainable=False``
and runs in inference mode although the encoder as a whole is called in training mode:
BatchNormalization with ``trainable=False`` uses its moving statistics (Keras 3 semantics),
and Dropout layers there get rate 0 (Keras runs a frozen Dropout in training mode, so their
rate is the only switch; a saved model records the 0). Layers above the top block (a head
convolution, a final LayerNorm, the pooler) keep their trainability.

The encoders' variables stay under the ``image_encoder`` / ``text_encoder`` sub-models, so an
optimizer can give them their own learning rate.

Example:
    >>> encoder = build_image_encoder("efficientnet_lite0", weights="none", image_size=32)
    >>> unfreeze_top_blocks(encoder, 1)
    ['block7']
"""

from __future__ import annotations

import logging
import re

import keras

logger = logging.getLogger(__name__)

# Each pattern's first group names the block a layer belongs to, in the order layers appear.
BLOCK_PATTERNS = (
    re.compile(r"^(block\d+)[a-z]?_"),           # VGG, Xception, EfficientNet(V2), EfficientNet-Lite
    re.compile(r"^(conv\d+)_block\d+_"),         # ResNet, ResNetV2, DenseNet
    re.compile(r"^(stack\d+)_block\d+_"),        # KerasHub ResNet
    re.compile(r"^(block_\d+)_"),                # MobileNetV2 inverted residuals
    re.compile(r"^(expanded_conv(?:_\d+)?)_"),   # MobileNetV2/V3
    re.compile(r"(stage_\d+)_block_\d+_"),       # ConvNeXt
)
TRANSFORMER_LISTS = ("transformer_layers", "encoder_layers")
DROPOUT_TYPES = (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _sublayers(layer):
    return layer._flatten_layers(include_self=True, recursive=True)


def _block_key(name: str):
    for pattern in BLOCK_PATTERNS:
        match = pattern.search(name)
        if match:
            return match.group(1)
    return None


def _functional_models(encoder):
    return [layer for layer in _sublayers(encoder) if isinstance(layer, keras.Model) and hasattr(layer, "_operations")]


def _transformer_blocks(encoder):
    """(blocks, layers below them) for a model holding a list of transformer layers, or None."""
    for owner in _sublayers(encoder):
        for attribute in TRANSFORMER_LISTS:
            stack = getattr(owner, attribute, None)
            if isinstance(stack, (list, tuple)) and stack and all(isinstance(x, keras.layers.Layer) for x in stack):
                break
        else:
            continue
        below = []
        ids = {id(x) for x in stack}
        if isinstance(owner, keras.Model) and hasattr(owner, "_operations"):
            first = next(i for i, x in enumerate(owner.layers) if id(x) in ids)
            below += owner.layers[:first]
        else:  # a layer holding the stack (ViTEncoder): its own dropout runs before it
            below += [x for x in owner._layers if isinstance(x, DROPOUT_TYPES)]
            for model in _functional_models(encoder):
                if any(x is owner for x in model.layers):
                    below += model.layers[: next(i for i, x in enumerate(model.layers) if x is owner)]
        return [(x.name, [x]) for x in stack], below
    return None


def _named_blocks(encoder):
    """(blocks, layers below them) from layer names of the encoder's convolutional backbone."""
    for model in reversed(_functional_models(encoder)):  # innermost first: the backbone
        blocks, below = [], []
        for layer in model.layers:
            key = _block_key(layer.name)
            if key is not None and (not blocks or blocks[-1][0] != key):
                blocks.append((key, []))
            (blocks[-1][1] if blocks else below).append(layer)
        if blocks:
            return blocks, below
    return None


def encoder_blocks(encoder: keras.Model):
    """The encoder's blocks, bottom to top, and the layers below the first one.

    Returns:
        ``(blocks, below)``: ``blocks`` a list of ``(name, [layers])``; a conv block also holds
        the layers up to the next block (so the top block holds the head); ``below`` the stem
        or embedding layers.

    Raises:
        ValueError: no blocks were found (the message names the encoder's layers).
    """
    found = _transformer_blocks(encoder) or _named_blocks(encoder)
    if not found:
        names = [layer.name for model in _functional_models(encoder) for layer in model.layers][:12]
        raise ValueError(
            f"cannot split {encoder.name!r} into blocks for partial fine-tuning: it has no "
            f"transformer layers and no layer names like 'block5_*' or 'conv4_block*' "
            f"(first layers: {names}). Use --freeze-image/--freeze-text or train it whole."
        )
    return found


@keras.saving.register_keras_serializable(package="tfmm")
class InferenceModeModel(keras.Model):
    """A functional model that always runs in inference mode, also inside ``fit``.

    Keras 3 passes the outer model's ``training`` flag to every nested model, overriding a
    ``training=False`` given when the graph was built, and ``trainable=False`` does not stop
    Dropout. This model ignores the flag it receives. Built from another functional model's
    inputs and outputs, it holds the same layers and variables.

    Example:
        >>> frozen = InferenceModeModel(encoder.inputs, encoder.outputs, name=encoder.name)
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def freeze_encoder(encoder: keras.Model) -> keras.Model:
    """``encoder`` frozen and in inference mode: the same layers, as an :class:`InferenceModeModel`."""
    encoder.trainable = False
    if isinstance(encoder, InferenceModeModel):
        return encoder
    frozen = InferenceModeModel(encoder.input, encoder.output, name=encoder.name)  # same input structure
    frozen.trainable = False
    return frozen


def run_in_inference_mode(layer: keras.layers.Layer) -> None:
    """Freezes ``layer`` and switches off the dropout inside it (rate 0), BatchNorm then
    following Keras 3's ``trainable=False`` semantics (moving statistics)."""
    layer.trainable = False
    for sub in _sublayers(layer):
        if isinstance(sub, DROPOUT_TYPES):
            sub.rate = 0.0
        if isinstance(sub, keras.layers.MultiHeadAttention):
            sub._dropout = 0.0


def unfreeze_top_blocks(encoder: keras.Model, n: int, *, flag: str = "unfreeze_blocks") -> list:
    """Leaves only the top ``n`` blocks of ``encoder`` (and what is above them) trainable.

    Args:
        encoder: a built ``image_encoder`` or ``text_encoder`` (trainable).
        n: number of top blocks to train (>= 1).
        flag: the config field, named in errors (``unfreeze_image_blocks``, ...).

    Returns:
        The names of the blocks left trainable, bottom to top.

    Raises:
        ValueError: ``n`` exceeds the number of blocks (the message says how many there are),
            or the encoder has no blocks.

    Example:
        >>> unfreeze_top_blocks(text_encoder, 2, flag="unfreeze_text_layers")
        ['transformer_layer_4', 'transformer_layer_5']
    """
    blocks, below = encoder_blocks(encoder)
    if not 1 <= n <= len(blocks):
        raise ValueError(
            f"{flag} must be between 1 and the number of blocks of {encoder.name!r}, "
            f"{len(blocks)} ({[name for name, _ in blocks]}); received {n}"
        )
    frozen = below + [layer for _, layers in blocks[: len(blocks) - n] for layer in layers]
    for layer in frozen:
        run_in_inference_mode(layer)
    top = [name for name, _ in blocks[len(blocks) - n:]]
    norms = _keep_batch_norm_statistics([layer for _, layers in blocks[len(blocks) - n:] for layer in layers])
    logger.info("%s: training the top %d of %d blocks %s; the rest frozen in inference mode%s",
                encoder.name, n, len(blocks), top,
                f"; their {norms} BatchNormalization layers keep the pretrained statistics" if norms else "")
    return top


def _keep_batch_norm_statistics(layers) -> int:
    """Freezes the BatchNormalization layers in ``layers`` (Keras 3: inference mode, moving
    statistics and scale/offset fixed), as Keras' fine-tuning guide recommends: batch statistics
    of a few dozen images would replace the pretrained ones. Returns how many there were."""
    norms = list({id(sub): sub for layer in layers for sub in _sublayers(layer)
                  if isinstance(sub, keras.layers.BatchNormalization)}.values())
    for norm in norms:
        norm.trainable = False
    return len(norms)
