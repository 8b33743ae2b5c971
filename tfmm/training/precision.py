"""Mixed precision and XLA settings for ``tfmm train``.

``--mixed-precision mixed_float16`` (GPUs) or ``mixed_bfloat16`` (TPUs, recent CPUs) builds
the model under that Keras dtype policy: layers compute in 16 bits and keep float32
weights; the output layer (``scores``, see :mod:`tfmm.models.heads`) stays float32 so the loss and
the saved model's outputs are float32. With ``mixed_float16`` ``model.compile`` wraps the
optimizer in a ``LossScaleOptimizer``. The policy is set only while the model is built
(layers keep the policy they were made with), so it does not leak into the caller.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import keras

from tfmm.config import PRECISIONS

logger = logging.getLogger(__name__)


def policy_name(mixed_precision: str) -> str:
    """``TrainConfig.mixed_precision`` -> a Keras dtype policy name.

    Raises:
        ValueError: not one of ``PRECISIONS``.
    """
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {list(PRECISIONS)}; received {mixed_precision!r}")
    return "float32" if mixed_precision == "none" else mixed_precision


@contextlib.contextmanager
def dtype_policy(mixed_precision: str):
    """Sets the global Keras dtype policy inside the ``with`` block, then restores it.

    Example:
        >>> with dtype_policy("mixed_bfloat16"):
        ...     model = build_model(config)
    """
    name = policy_name(mixed_precision)
    previous = keras.config.dtype_policy()
    if name != "float32":
        logger.info("mixed precision: building the model with dtype policy %s", name)
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def jit_compile_arg(jit_compile: Optional[bool]):
    """``TrainConfig.jit_compile`` -> ``model.compile(jit_compile=...)``: ``None`` is
    Keras' ``"auto"`` (XLA where supported and not on CPU only)."""
    return "auto" if jit_compile is None else bool(jit_compile)
