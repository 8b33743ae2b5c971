"""Poolings of a text backbone's token vectors into one vector per text.

``MaskedMeanPooling`` (in :mod:`tfmm.models.text`, the default) averages the tokens the
padding mask keeps; this module adds the two single-token summaries:

- :class:`FirstTokenPooling`: the vector at position 0 (the ``[CLS]`` / ``<s>`` token of an
  encoder without a pooler, e.g. DistilBERT, RoBERTa);
- :class:`LastTokenPooling`: the vector of the last position the padding mask keeps, the
  natural summary of a causal decoder (GPT-2, Gemma, Llama), where only the last token has
  attended to the whole text. It follows ``padding_mask``, not the pad id (GPT-2 pads with
  id 0, a real token), so it is right for left and right padding alike.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfmm")
class FirstTokenPooling(keras.layers.Layer):
    """The vector of the first token: ``[B, L, H]`` -> ``[B, H]``.

    Example:
        >>> FirstTokenPooling()(keras.ops.ones((2, 4, 8))).shape
        (2, 8)
    """

    def call(self, sequence):
        return sequence[:, 0, :]

    def compute_output_shape(self, sequence_shape):
        return (sequence_shape[0], sequence_shape[-1])


@keras.saving.register_keras_serializable(package="tfmm")
class LastTokenPooling(keras.layers.Layer):
    """The vector of the last position where ``padding_mask`` is set: ``[B, L, H]`` -> ``[B, H]``.

    Works for right padding (``1 1 1 0 0``: position 2) and left padding (``0 0 1 1 1``:
    position 4); a row with no position set takes position 0.

    Example:
        >>> pool = LastTokenPooling()
        >>> seq = keras.ops.reshape(keras.ops.arange(12, dtype="float32"), (2, 3, 2))
        >>> pool(seq, keras.ops.convert_to_tensor([[1, 1, 0], [0, 1, 1]]))
        [[2., 3.], [10., 11.]]
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.cast(padding_mask, "int32")
        positions = keras.ops.arange(1, keras.ops.shape(mask)[1] + 1, dtype="int32")
        # The largest (position + 1) among kept positions; 0 when none is kept.
        last = keras.ops.maximum(keras.ops.max(mask * positions[None, :], axis=1) - 1, 0)
        index = keras.ops.expand_dims(keras.ops.expand_dims(last, -1), -1)
        return keras.ops.take_along_axis(sequence, index, axis=1)[:, 0, :]

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])
