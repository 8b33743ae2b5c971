"""Whatever clients send, the serving signature returns scores or a clear error, and lives on."""

import io
import resource
import struct

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image


def _png_bytes(size=(20, 14), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png():
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64


SEEDS = [_png_bytes(), _png_bytes((7, 31), "L"), _png_bytes((9, 9), "RGBA")]


def _mutate(data: bytes, positions, values) -> bytes:
    raw = bytearray(data)
    for p, v in zip(positions, values):
        raw[p % len(raw)] = v
    return bytes(raw)


image_bytes = st.one_of(
    st.binary(max_size=256),
    st.builds(_mutate, st.sampled_from(SEEDS), st.lists(st.integers(0, 10_000), max_size=8),
              st.lists(st.integers(0, 255), max_size=8)),
    st.builds(lambda d, n: d[:n], st.sampled_from(SEEDS), st.integers(0, 200)),  # truncated
    st.sampled_from(SEEDS + [_bomb_png()]),
)


def _call(fn, images, texts):
    try:
        out = fn(image_bytes=tf.constant(images, tf.string), text=tf.constant(texts, tf.string))
    except tf.errors.InvalidArgumentError as e:
        return None, e.message
    return out, None


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(images=st.lists(image_bytes, min_size=1, max_size=3),
       texts=st.lists(st.text(max_size=300), min_size=3, max_size=3))
def test_signature_answers_or_names_the_bad_input(serving_fn, images, texts):
    out, error = _call(serving_fn, images, texts[: len(images)])
    if error is None:
        scores = out["scores"].numpy()
        assert scores.shape[0] == len(images) and np.isfinite(scores).all()
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-4)
    else:
        assert "image_bytes[" in error, error[:500]


@pytest.mark.slow
def test_bomb_is_refused_by_index_without_large_allocation(serving_fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, error = _call(serving_fn, [SEEDS[0], _bomb_png()], ["a red one", "a blue one"])
    assert out is None and "image_bytes[1]" in error and "max_image_pixels" in error
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500  # decoding 100000 x 100000 RGB would take ~28 GiB
    out, error = _call(serving_fn, [SEEDS[0]], ["a red one"])  # the process serves on
    assert error is None and out["scores"].shape[0] == 1
    huge_text, error = _call(serving_fn, [SEEDS[1]], ["word " * 200_000])
    assert error is None and huge_text["scores"].shape[0] == 1
