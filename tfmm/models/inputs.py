"""The model's symbolic text inputs, shared by every text branch (separate encoders or a dual
encoder's text tower)."""

from __future__ import annotations

import keras

from tfmm.models.wordpiece_preprocessor import TEXT_INPUTS


def text_inputs(sequence_length: int) -> dict:
    """The model's text ``keras.Input``s, named as the dataset's text features."""
    return {
        name: keras.Input(shape=(sequence_length,), dtype="int32", name=name)
        for name in TEXT_INPUTS
    }
