"""Fusion layers: combine per-modality feature vectors of equal width into one."""

from __future__ import annotations

import keras

FUSIONS = ("concat", "gated", "mean", "sum")


@keras.saving.register_keras_serializable(package="tfmm")
class Fusion(keras.layers.Layer):
    """Fuses a list of ``[B, D]`` tensors (one per modality) into ``[B, D']``.

    Modes: ``concat`` (``D' = n * D``), ``sum``, ``mean`` and ``gated`` (a weighted sum
    whose per-feature weights over the modalities are a softmax of a learned function
    of all inputs; ``D' = D``).
    A single input passes through unchanged, so single-modality baselines use the same head.

    Args:
        mode: one of ``FUSIONS``.

    Raises:
        ValueError: unknown mode, or inputs of different widths for sum/mean/gated.

    Example:
        >>> fuse = Fusion("sum")
        >>> y = fuse([keras.ops.ones((2, 8)), keras.ops.zeros((2, 8))])
    """

    def __init__(self, mode: str = "concat", **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {list(FUSIONS)}; received {mode!r}")
        self.mode = mode

    def build(self, input_shape):
        shapes = list(input_shape)
        widths = [s[-1] for s in shapes]
        if self.mode != "concat" and len(set(widths)) > 1:
            raise ValueError(
                f"fusion {self.mode!r} needs inputs of equal width; received widths {widths}"
            )
        if self.mode == "gated" and len(shapes) > 1:
            total = sum(widths)
            # One gate logit per modality and feature, computed from all modalities.
            self.gate_kernel = self.add_weight(
                name="gate_kernel", shape=(total, len(shapes) * widths[0]),
                initializer="glorot_uniform",
            )
            self.gate_bias = self.add_weight(
                name="gate_bias", shape=(len(shapes) * widths[0],), initializer="zeros"
            )

    def call(self, inputs):
        inputs = list(inputs)
        if len(inputs) == 1:
            return inputs[0]
        if self.mode == "concat":
            return keras.ops.concatenate(inputs, axis=-1)
        stacked = keras.ops.stack(inputs, axis=1)  # [B, M, D]
        if self.mode == "sum":
            return keras.ops.sum(stacked, axis=1)
        if self.mode == "mean":
            return keras.ops.mean(stacked, axis=1)
        logits = keras.ops.matmul(keras.ops.concatenate(inputs, axis=-1), self.gate_kernel)
        logits = keras.ops.reshape(logits + self.gate_bias, (-1, len(inputs), inputs[0].shape[-1]))
        weights = keras.ops.softmax(logits, axis=1)
        return keras.ops.sum(weights * stacked, axis=1)

    def compute_output_shape(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) == 1 or self.mode != "concat":
            return tuple(shapes[0])
        return (shapes[0][0], sum(s[-1] for s in shapes))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
