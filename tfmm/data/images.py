"""Encoded images: header checks and decoding, shared by the input pipeline and the serving graph.

:func:`decode_image` is the one decoder of tfmm: ``tf.data`` (:mod:`tfmm.data.pipeline`),
prepared TFRecords and the exported SavedModel all call it, so a served image is decoded
and resized exactly as in training.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What a transparent pixel shows: white, as an image viewer or a web page shows a cut-out
# product photo or a sticker. A PNG's transparent pixels still store colours (often black, or
# what the picture held before it was cut out), which the encoder would otherwise see.
BACKGROUND = 255.0


def _header_uint(header, start: int, length: int, *, big_endian: bool):
    """Unsigned integer of ``length`` bytes at ``start`` of a uint8 header vector (int64)."""
    value = tf.constant(0, tf.int64)
    order = range(length) if big_endian else reversed(range(length))
    for i in order:
        value = value * 256 + header[start + i]
    return value


def image_header_size(image_bytes):
    """``(height, width)`` read from a JPEG/PNG/GIF/BMP header, without decoding pixels.

    Returns ``(-1, -1)`` for bytes of any other format (decoding then fails with TF's own
    "unknown image format" error). Works eagerly and inside ``tf.data`` / ``tf.function``.
    """
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * 32)])
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)
    magic = tf.strings.substr(padded, 0, 8)

    def png():
        return (_header_uint(header, 20, 4, big_endian=True), _header_uint(header, 16, 4, big_endian=True))

    def gif():
        return (_header_uint(header, 8, 2, big_endian=False), _header_uint(header, 6, 2, big_endian=False))

    def bmp():
        height = _header_uint(header, 22, 4, big_endian=False)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # top-down BMPs store -height
        return (height, _header_uint(header, 18, 4, big_endian=False))

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return (shape[0], shape[1])

    def unknown():
        return (tf.constant(-1, tf.int64), tf.constant(-1, tf.int64))

    return tf.case(
        [
            (tf.equal(magic, PNG_MAGIC), png),
            (tf.equal(tf.strings.substr(magic, 0, 4), b"GIF8"), gif),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg),
        ],
        default=unknown,
        exclusive=True,
    )


def _decode_rgb(image_bytes) -> tf.Tensor:
    """Encoded bytes -> ``[H, W, 3]`` float32 in ``[0, 255]``; a PNG's alpha (RGBA, grey + alpha,
    or a palette with transparency) composited over :data:`BACKGROUND`."""
    def png():
        rgba = tf.cast(tf.io.decode_png(image_bytes, channels=4), tf.float32)
        alpha = rgba[..., 3:] / 255.0
        return rgba[..., :3] * alpha + BACKGROUND * (1.0 - alpha)

    def other():
        return tf.cast(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), tf.float32)

    image = tf.cond(tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_MAGIC)), PNG_MAGIC), png, other)
    return tf.ensure_shape(image, [None, None, 3])


def decode_image(image_bytes, image_size: int, max_pixels: Optional[int] = None, name=None):
    """Encoded JPEG/PNG/GIF/BMP bytes -> ``[S, S, 3]`` float32 RGB in ``[0, 255]``.

    Grayscale becomes RGB; a transparent PNG is composited over white (:data:`BACKGROUND`); a
    GIF gives its first frame. The serving export uses this same function, so training and
    serving see identical pixels.

    Args:
        image_bytes: scalar string tensor of encoded image bytes.
        image_size: output side ``S``.
        max_pixels: when set, the header's width x height is checked against it *before*
            the pixels are decoded, so a decompression bomb fails fast instead of allocating.
        name: optional string tensor (a path, a row or request index) named in that error.
    """
    checks = []
    if max_pixels:
        height, width = image_header_size(image_bytes)
        what = [name] if name is not None else []
        checks.append(tf.debugging.Assert(
            height * width <= max_pixels,
            [f"image header claims more pixels than the limit of {max_pixels} (max_image_pixels): "
             "refusing to decode;"] + what + ["height", height, "width", width],
        ))
    with tf.control_dependencies(checks):
        image = _decode_rgb(image_bytes)
    return tf.image.resize(image, (image_size, image_size), method="bilinear")


# First bytes of each format tf.io.decode_image reads.
IMAGE_MAGIC = (b"\xff\xd8\xff", PNG_MAGIC, b"GIF87a", b"GIF89a", b"BM")


def _first(indices: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """The smallest of ``indices``, or ``n`` when there is none (safe in an assert message)."""
    return tf.reduce_min(tf.concat([indices, [n]], 0))


def check_image_bytes(image_bytes: tf.Tensor) -> tf.Operation:
    """An assert that every element starts like a JPEG, PNG, GIF or BMP file, naming the first bad index."""
    ok = tf.zeros_like(image_bytes, dtype=tf.bool)
    for magic in IMAGE_MAGIC:
        ok |= tf.strings.substr(image_bytes, 0, len(magic)) == magic
    index = tf.range(tf.size(image_bytes))
    bad = tf.boolean_mask(index, ~ok)
    first = _first(bad, tf.size(image_bytes))
    size = tf.reduce_sum(tf.where(index == first, tf.strings.length(image_bytes), 0))
    message = tf.strings.format(
        "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image ({} bytes); bad indices: {}. Send the "
        "encoded file bytes (in REST, base64-encoded under the key b64).", (first, size, bad),
        summarize=20,
    )
    return tf.debugging.Assert(tf.reduce_all(ok), [message])


def decode_images(image_bytes: tf.Tensor, image_size: int, max_pixels: int = None) -> tf.Tensor:
    """Encoded images ``[B]`` -> ``[B, S, S, 3]`` float32, with :func:`tfmm.data.images.decode_image`.

    Decoding runs in a ``tf.data`` pipeline inside the graph (in parallel, order kept;
    ``Dataset.get_single_element`` is the documented way to use tf.data in a serving
    signature) so that an image that fails to decode is *named*: ``ignore_errors`` drops
    it and the assert below reports its index, instead of a bare decoder error. With
    ``max_pixels``, each header's width x height is checked before its pixels are decoded,
    so a decompression bomb is refused (and named) without a large allocation.
    """
    with tf.control_dependencies([check_image_bytes(image_bytes)]):
        n = tf.size(image_bytes)
    index = tf.range(n)
    ds = tf.data.Dataset.from_tensor_slices((index, image_bytes))
    ds = ds.map(lambda i, b: (i, decode_image(b, image_size, max_pixels)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(tf.cast(tf.maximum(n, 1), tf.int64))
    # The batch is missing when no image decoded: fall back to an empty one.
    empty = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), tf.zeros([0, image_size, image_size, 3])))
    decoded, images = ds.concatenate(empty).take(1).get_single_element()
    failed = tf.boolean_mask(index, tf.scatter_nd(decoded[:, tf.newaxis], tf.ones_like(decoded), [n]) == 0)
    message = tf.strings.format(
        "image_bytes[{}] could not be decoded (corrupt or truncated image, or more than "
        f"{max_pixels or 'the'} pixels (max_image_pixels) in its header); bad indices: {{}}",
        (_first(failed, n), failed), summarize=20,
    )
    with tf.control_dependencies([tf.debugging.Assert(tf.size(failed) == 0, [message])]):
        return tf.ensure_shape(tf.identity(images), [None, image_size, image_size, 3])
