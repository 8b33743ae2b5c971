"""The serving graph: a ``keras.export.ExportArchive`` of a trained run and its signatures.

``serving_default`` takes raw image bytes (JPEG/PNG/GIF/BMP) and raw text (``image_bytes``,
``text``: DT_STRING ``[-1]``) and returns ``scores`` and ``labels``: decoding and resizing
(:func:`tfmm.data.images.decode_images`) and tokenizing (the run's own text preprocessor)
happen inside the graph, exactly as in training. ``serving_pixels`` takes already-decoded
images (``image``: float32 ``[-1, S, S, 3]`` RGB in ``[0, 255]``) for batch pipelines.
:mod:`tfmm.serving.export` writes the archive as a version folder.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmm.data.images import decode_images
from tfmm.models import heads
from tfmm.serving.saved_model import PIXELS_SIGNATURE, SIGNATURE
from tfmm.tasks import contrastive
from tfmm.tasks.thresholds import load_thresholds, serving_outputs
def task_outputs(scores, task: str, labels: tf.Tensor, thresholds=None) -> dict:
    """The signature's outputs from the model's: ``scores`` and ``labels`` for class tasks
    (binary: both classes; multilabel adds ``predicted``), ``match_score`` and ``match`` for
    matching (see :func:`tfmm.tasks.thresholds.serving_outputs`), the model's own outputs otherwise."""
    if isinstance(scores, dict):
        return dict(scores)
    if task in ("multilabel", "matching"):
        names = [n.decode() if isinstance(n, bytes) else n for n in labels.numpy().tolist()]
        return serving_outputs(task, scores, names, thresholds)
    if task not in heads.HEAD_TASKS:
        return {"outputs": scores}
    if task == "binary":
        scores = tf.concat([1.0 - scores, scores], axis=1)
    return {"scores": scores, "labels": tf.tile(labels[tf.newaxis], [tf.shape(scores)[0], 1])}


class SignatureOutputs:
    """Model features -> the signature's outputs, for every task (in graph and eagerly).

    Contrastive runs are served through their towers: ``similarity`` (cosine of the row's
    image and text), ``image_embedding`` and ``text_embedding`` (L2-normalized), since the
    model's own output is an in-batch similarity matrix.
    """

    def __init__(self, run):
        self.run, self.task = run, run.config.model.task
        self.labels = tf.constant(list(run.labels) or [""], dtype=tf.string)
        self.thresholds = None
        if self.task in ("multilabel", "matching"):
            self.thresholds = load_thresholds(run.run_dir, list(run.labels) if self.task == "multilabel" else ["1"])
        if self.task == "contrastive":
            self.image_tower = contrastive.image_embedding_model(run.model)
            self.text_tower = contrastive.text_embedding_model(run.model)

    def embed_image(self, images):
        return self.image_tower(images, training=False)

    def embed_text(self, tokens):
        return self.text_tower(tokens, training=False)

    def __call__(self, features: dict) -> dict:
        if self.task == "contrastive":
            a = self.embed_image(features["image"])
            b = self.embed_text({k: v for k, v in features.items() if k != "image"})
            return {"similarity": tf.reduce_sum(a * b, axis=1), "image_embedding": a, "text_embedding": b}
        return task_outputs(self.run.model(features, training=False), self.task, self.labels, self.thresholds)


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
    outputs_of = SignatureOutputs(run)
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
        pad = tf.maximum(1 - n, 0)
        features = {}
        if mc.uses_image:
            features["image"] = tf.concat([images, tf.zeros([pad, size, size, 3])], 0)
        if mc.uses_text:
            features.update(run.preprocessor(tf.concat([text, tf.fill([pad], "")], 0)))
        return tf.nest.map_structure(lambda t: t[:n], outputs_of(features))

    def serve_bytes(image_bytes, text):
        images = decode_images(image_bytes, size, run.config.data.max_image_pixels) if mc.uses_image else image_bytes
        return predict(images, text)

    text_spec = tf.TensorSpec([None], tf.string, name="text")
    archive.add_endpoint(SIGNATURE, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"), text_spec])
    archive.add_endpoint(PIXELS_SIGNATURE, predict, input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="image"), text_spec])
    if mc.task == "contrastive":  # vectors for an ANN index
        def embed_image(image_bytes):
            n = tf.size(image_bytes)
            images = decode_images(image_bytes, size, run.config.data.max_image_pixels)
            images = tf.concat([images, tf.zeros([tf.maximum(1 - n, 0), size, size, 3])], 0)
            return {"embedding": outputs_of.embed_image(images)[:n]}

        def embed_text(text):
            n = tf.size(text)
            tokens = run.preprocessor(tf.concat([text, tf.fill([tf.maximum(1 - n, 0)], "")], 0))
            return {"embedding": outputs_of.embed_text(tokens)[:n]}

        archive.add_endpoint("embed_image", embed_image,
                             input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.add_endpoint("embed_text", embed_text, input_signature=[text_spec])
    return archive
