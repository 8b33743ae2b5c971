"""Pooling of token vectors: ``last`` against a hand computation, left and right padding."""

import keras
import numpy as np
import pytest

from tfmm.models.text import build_text_encoder
from tfmm.models.text_pooling import FirstTokenPooling, LastTokenPooling

SEQ = np.arange(3 * 5 * 2, dtype="float32").reshape(3, 5, 2)
MASKS = np.array([
    [1, 1, 1, 0, 0],  # right padding: the last kept position is 2
    [0, 0, 1, 1, 1],  # left padding: 4
    [1, 1, 1, 1, 1],  # no padding: 4
], "int32")


def _by_hand(seq, masks):
    rows = []
    for vectors, mask in zip(seq, masks):
        kept = [i for i, m in enumerate(mask) if m]
        rows.append(vectors[kept[-1]])
    return np.stack(rows)


def test_last_token_pooling_follows_the_mask_for_left_and_right_padding(tmp_path):
    got = keras.ops.convert_to_numpy(LastTokenPooling()(SEQ, MASKS))
    np.testing.assert_array_equal(got, _by_hand(SEQ, MASKS))
    np.testing.assert_array_equal(got[:, 0], [4.0, 18.0, 28.0])  # positions 2, 4, 4
    # The pad id plays no part: a pad token equal to a real one (GPT-2's 0) changes nothing.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(FirstTokenPooling()(SEQ)), SEQ[:, 0])

    s, m = keras.Input((5, 2)), keras.Input((5,), dtype="int32")
    model = keras.Model([s, m], LastTokenPooling(name="last")(s, m))
    model.save(str(tmp_path / "p.keras"))
    loaded = keras.models.load_model(str(tmp_path / "p.keras"))
    np.testing.assert_array_equal(loaded.predict([SEQ, MASKS], verbose=0), _by_hand(SEQ, MASKS))
    clone = LastTokenPooling.from_config(LastTokenPooling(name="x").get_config())
    assert clone.name == "x"


def test_build_text_encoder_rejects_bad_pooling_dtype_and_frozen_lora():
    with pytest.raises(ValueError, match=r"text_pooling must be one of \['cls', 'last', 'mean'\]; received 'max'"):
        build_text_encoder("minilm", pooling="max")
    with pytest.raises(ValueError, match="text_dtype must be one of .*; received 'int8'"):
        build_text_encoder("minilm", dtype="int8")
    with pytest.raises(ValueError, match="text_lora_rank=4 trains LoRA adapters, but the text encoder is frozen"):
        build_text_encoder("minilm", lora_rank=4, trainable=False)
