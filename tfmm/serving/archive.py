"""The serving graph: a ``keras.export.ExportArchive`` of a trained run and its signatures.

``serving_default`` takes raw image bytes (JPEG/PNG/GIF/BMP) and raw text (``image_bytes``,
``text``: DT_STRING ``[-1]``) and returns the task's outputs (``scores`` and ``labels`` for
classification; see each task's ``serving_outputs`` in :mod:`tfmm.tasks`): decoding and resizing
(:func:`tfmm.data.images.decode_images`) and tokenizing (the run's own text preprocessor)
happen inside the graph, exactly as in training. ``serving_pixels`` takes already-decoded
images (``image``: float32 ``[-1, S, S, 3]`` RGB in ``[0, 255]``) for batch pipelines.
:mod:`tfmm.serving.export` writes the archive as a version folder.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmm.data.images import decode_images
from tfmm.serving.saved_model import PIXELS_SIGNATURE, SIGNATURE
from tfmm.tasks import get_task
from tfmm.tasks.base import pad_empty


def _text_resources(preprocessor) -> list:
    """The trackable parts (tokenizer, packer, lookup tables, loaded SavedModels) of a preprocessor."""
    trackable = tf.__internal__.tracking.Trackable
    if isinstance(preprocessor, trackable):
        return [preprocessor]
    return [value for value in vars(preprocessor).values() if isinstance(value, trackable)]


def build_export_archive(run) -> keras.export.ExportArchive:
    """A ``keras.export.ExportArchive`` with the ``serving_default`` and ``serving_pixels`` endpoints.

    Args:
        run: a :class:`~tfmm.run_dir.LoadedRun`.

    Example:
        >>> build_export_archive(load_run("runs/demo")).write_out("/tmp/model/1")
    """
    mc, size = run.config.model, run.config.data.image_size
    task = get_task(mc.task)
    outputs_of = task.serving_outputs(run)
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    if mc.uses_text:
        run.preprocessor(tf.constant(["tfmm"]))  # builds the tokenizer layers before tracking
        for resource in _text_resources(run.preprocessor):
            archive.track(resource)

    def predict(images, text):
        n = tf.shape(images if mc.uses_image else text)[0]
        if mc.modalities == "both":
            tf.debugging.assert_equal(
                n, tf.shape(text)[0],
                message="one text per image: the image input and text must have the same length",
            )
        # An empty batch runs on one padding row (oneDNN convolutions fail on 0 rows).
        features = {}
        if mc.uses_image:
            features["image"] = pad_empty(images, 0.0)
        if mc.uses_text:
            features.update(run.preprocessor(pad_empty(text, "")))
        return tf.nest.map_structure(lambda t: t[:n], outputs_of(features))

    def serve_bytes(image_bytes, text):
        images = decode_images(image_bytes, size, run.config.data.max_image_pixels) if mc.uses_image else image_bytes
        return predict(images, text)

    text_spec = tf.TensorSpec([None], tf.string, name="text")
    archive.add_endpoint(SIGNATURE, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"), text_spec])
    archive.add_endpoint(PIXELS_SIGNATURE, predict, input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="image"), text_spec])
    for name, (fn, signature) in task.serving_endpoints(run, outputs_of).items():  # e.g. embeddings
        archive.add_endpoint(name, fn, input_signature=signature)
    return archive
