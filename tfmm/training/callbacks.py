"""TensorBoard reporting during training, as Keras callbacks.

``keras.callbacks.TensorBoard`` (added by :func:`tfmm.training.train.default_callbacks`) already
writes the loss, the metrics and the learning rate (``epoch_learning_rate``: the
schedule's value at the end of each epoch) under ``RUN/logs/train`` and
``RUN/logs/validation``. These callbacks add what it does not:

- :class:`ValidationSummaries`: each epoch, a confusion-matrix image and a grid of
  validation examples (image, caption, prediction, true label) under ``logs/validation``;
- :func:`hparams_callback`: the run's config in the HParams dashboard, next to the
  validation metrics;
- :class:`EmbeddingProjector`: at the end of training, the fused validation embeddings
  (the output of the ``fusion`` layer of the ``fusion_head`` model) in the Projector,
  with label, prediction and caption metadata and an image sprite (``logs/validation``:
  the Projector shows them for the ``validation`` run).

:func:`reporting_callbacks` builds them all for ``tfmm.train``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import weakref
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm import plots
from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest
from tfmm.models import head_ensemble, text
from tfmm.run_dir import LOGS_DIR
from tfmm.tasks import get_task

logger = logging.getLogger(__name__)

TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
PROJECTOR_CHECKPOINT = "projector_embeddings.ckpt"
PROJECTOR_METADATA = "projector_metadata.tsv"
PROJECTOR_SPRITE = "projector_sprite.png"
# The variable's key in the checkpoint written by tf.train.Checkpoint(embedding=...).
PROJECTOR_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
MAX_IMAGE_LOGS = 10  # validation images drawn per run, at most (about)


def _png_summary(name: str, png: bytes, step: int) -> None:
    image = tf.image.decode_png(png, channels=4)
    tf.summary.image(name, image[tf.newaxis], step=step)


class ValidationSummaries(keras.callbacks.Callback):
    """Each epoch: a confusion matrix and example predictions on the validation set.

    Scores the whole validation set once per logged epoch and writes two images under
    ``log_dir/validation``: ``confusion_matrix`` (single-label tasks) and
    ``validation_examples`` (the first ``num_examples`` rows: image, caption, predicted
    label and score, true label; green when right, red when wrong). Tasks that tune
    decision thresholds (multilabel) decide with thresholds tuned on these scores, as the
    run will after ``fit``.

    Args:
        log_dir: the TensorBoard folder (``RUN/logs``).
        val_ds: the validation dataset, unshuffled, in ``val_manifest`` order.
        val_manifest: the validation manifest (captions and labels).
        labels: the label vocabulary.
        task: a task name or object (:mod:`tfmm.tasks`) with ``validation_summaries``.
        num_examples: how many examples the grid shows.
        freq: log every ``freq`` epochs (and always the last one); see :func:`image_log_freq`.

    On cached features (:mod:`tfmm.training.cached_fit`), ``scoring_ds`` is set to the
    validation features as the fitted model reads them, and the fitted model scores them
    (the frozen encoders' outputs are the cached ones), instead of running the encoders
    over ``val_ds`` again each epoch.

    Example:
        >>> cb = ValidationSummaries("runs/a/logs", val_ds, val_manifest, labels, task="classification")
        >>> model.fit(train_ds, validation_data=val_ds, callbacks=[cb])
    """

    def __init__(self, log_dir: str, val_ds: tf.data.Dataset, val_manifest: Manifest,
                 labels: Sequence[str], *, task="classification", num_examples: int = 8,
                 freq: int = 1):
        super().__init__()
        self.scoring_ds = None  # set when fit trains on cached features (see the class doc)
        if freq < 1:
            raise ValueError(f"freq must be >= 1; received {freq}")
        self.log_dir = log_dir
        self.val_ds = val_ds
        self.manifest = val_manifest
        self.labels = list(labels)
        self.task = get_task(task)
        self.num_examples = min(num_examples, len(val_manifest))
        self.freq = freq
        self._writer = None
        self._images = None
        self._targets = None

    def _example_images(self) -> Optional[np.ndarray]:
        """Pixels of the first examples, read once from the dataset."""
        if self._images is None:
            batch = next(iter(self.val_ds.unbatch().batch(self.num_examples).take(1)))
            features = batch[0] if isinstance(batch, tuple) else batch
            self._images = features["image"].numpy() if "image" in features else False
        return self._images if self._images is not False else None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, VALIDATION_RUN))

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.freq and epoch + 1 != last:
            return
        scores = np.asarray(scoring_embedder(self.model).predict(self.scoring_ds or self.val_ds, verbose=0)[1])
        if self._targets is None:  # the manifest does not change between epochs
            self._targets = self.task.encode_targets(self.manifest, self.labels)
        targets = self._targets
        names, top = self.task.decisions(scores, self.labels, self.task.tune_thresholds(targets, scores))
        true = self.task.true_names(self.manifest)
        k = self.num_examples
        with self._writer.as_default():
            if self.task.single_label:
                y_true = self.task.encoding.class_ids(targets)
                index = {name: i for i, name in enumerate(self.labels)}
                cm = np.zeros((len(self.labels),) * 2, dtype=np.int64)
                np.add.at(cm, (y_true, [index[n] for n in names]), 1)
                fig = plots.confusion_matrix_figure(cm, self.labels, title=f"Validation, epoch {epoch + 1}")
                _png_summary("confusion_matrix", plots.figure_to_png(fig), epoch)
            fig = plots.examples_figure(self._example_images(), list(self.manifest.frame["text"][:k]),
                                        names[:k], top[:k], true[:k])
            _png_summary("validation_examples", plots.figure_to_png(fig), epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flat_hparams(config: RunConfig) -> dict:
    """The config as ``{"model.fusion": "concat", ...}`` with HParams-friendly values."""
    out = {}
    for section, values in dataclasses.asdict(config).items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def hparams_callback(log_dir: str, config: RunConfig, *, has_val: bool = True) -> keras.callbacks.Callback:
    """The HParams plugin's Keras callback, recording ``config`` as this run's session.

    The session is written into ``log_dir/validation`` (``log_dir/train`` without
    validation data), where ``keras.callbacks.TensorBoard`` writes the ``epoch_*``
    scalars: the dashboard pairs a session only with scalars in its own folder or below,
    and cannot pair a session written at the root of the folder TensorBoard is pointed
    at. So the metric columns show whether TensorBoard is pointed at ``RUN/logs`` or at a
    folder of runs. The session is named after the run directory.
    """
    from tensorboard.plugins.hparams import api as hp

    trial = os.path.basename(os.path.dirname(os.path.abspath(log_dir)))
    session_dir = os.path.join(log_dir, VALIDATION_RUN if has_val else TRAIN_RUN)
    return hp.KerasCallback(session_dir, flat_hparams(config), trial_id=trial)


def fused_embedding_model(model: keras.Model) -> keras.Model:
    """A model from the fused model's inputs to ``[fused embedding, scores]``.

    The embedding is the output of the ``fusion`` layer inside the nested ``fusion_head``
    model (before dropout and the dense head; of its first member, for an ensemble head:
    :mod:`tfmm.models.head_ensemble`); the encoders and head share the trained
    weights. ``model`` may also be a trainer on cached features
    (:func:`tfmm.training.cached_fit.build_cached_trainer`): its ``image_features`` /
    ``text_features`` inputs go straight into the head.

    Raises:
        ValueError: ``model`` is not a model from :func:`tfmm.models.build.build_model`.
    """
    try:
        head = model.get_layer("fusion_head")
        parts = head_ensemble.members(head)
        fusion = (parts[0] if parts else head).get_layer("fusion")
    except ValueError as e:
        raise ValueError(
            "fused_embedding_model needs a tfmm model with a nested 'fusion_head' model holding "
            f"a 'fusion' layer; received model {model.name!r}: {e}"
        ) from e
    if parts:  # an ensemble head: the first member's fused embedding, the ensemble's scores
        embedding = keras.Model(parts[0].input, fusion.output)(head.input)
    else:
        embedding = fusion.output
    head_outputs = keras.Model(head.input, [embedding, head.output], name="fusion_head_embedding")
    inputs = model.input
    features = {}
    for name in head.input:
        if name in inputs:  # a cached feature
            features[name] = inputs[name]
        elif name == "image_features":
            features[name] = model.get_layer("image_encoder")(inputs["image"])
        else:
            features[name] = model.get_layer("text_encoder")({k: inputs[k] for k in text.TEXT_INPUTS})
    return keras.Model(inputs, head_outputs(features), name="fused_embedding")


_EMBEDDERS = weakref.WeakKeyDictionary()  # fitted model -> its fused_embedding_model


def scoring_embedder(model: keras.Model) -> keras.Model:
    """``fused_embedding_model(model)``, built once per model: :class:`ValidationSummaries`
    (scores, each epoch) and :class:`EmbeddingProjector` (embeddings, at the end) share it,
    so TensorFlow traces one prediction graph for both instead of two."""
    embedder = _EMBEDDERS.get(model)
    if embedder is None:
        embedder = _EMBEDDERS[model] = fused_embedding_model(model)
    return embedder


def _clean(value: str) -> str:
    return " ".join(str(value).split())  # no tabs or newlines inside a TSV cell


def _write_sprite(paths: Sequence[str], out: str, size: int) -> None:
    """Thumbnails of ``paths`` in a square grid, row-major, as the projector expects."""
    from PIL import Image

    side = math.ceil(math.sqrt(len(paths)))
    sprite = Image.new("RGB", (side * size, side * size), "white")
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                thumb = img.convert("RGB").resize((size, size))
        except Exception as e:  # a broken file should not lose the projector
            logger.warning("projector sprite: cannot read %s (%s); leaving its cell blank", path, e)
            continue
        sprite.paste(thumb, ((i % side) * size, (i // side) * size))
    sprite.save(out)


class EmbeddingProjector(keras.callbacks.Callback):
    """At the end of training, the fused validation embeddings in TensorBoard's Projector.

    Writes into ``log_dir/validation``: a checkpoint holding the ``[N, D]`` embeddings
    (the ``fusion`` layer's output for the first ``max_points`` validation rows),
    metadata (``label``, ``predicted``, ``caption`` per row), an image sprite and
    ``projector_config.pbtxt`` linking them. (The Projector looks for a checkpoint in each
    run folder and its parent, so only the ``validation`` run lists it.) Placed after
    EarlyStopping in the callback list, it embeds with the restored best weights. On cached
    features, the fitted model embeds ``scoring_ds`` (see :class:`ValidationSummaries`).

    Args:
        log_dir: the TensorBoard folder (``RUN/logs``).
        val_ds: the validation dataset, unshuffled, in ``val_manifest`` order.
        val_manifest: the validation manifest.
        labels: the label vocabulary.
        task: the run's task.
        max_points: embed at most this many rows.
        sprite_size: thumbnail side in pixels (0: no sprite).
    """

    def __init__(self, log_dir: str, val_ds: tf.data.Dataset, val_manifest: Manifest,
                 labels: Sequence[str], *, task="classification", max_points: int = 2000,
                 sprite_size: int = 32):
        super().__init__()
        self.scoring_ds = None  # set when fit trains on cached features (see ValidationSummaries)
        self.log_dir = log_dir
        self.val_ds = val_ds
        self.manifest = val_manifest
        self.labels = list(labels)
        self.task = get_task(task)
        self.max_points = max_points
        self.sprite_size = sprite_size

    def on_train_end(self, logs=None):
        from tensorboard.plugins import projector

        n = min(self.max_points, len(self.manifest))
        ds = self.scoring_ds or self.val_ds
        if n < len(self.manifest):
            # Exact cardinality: with an unknown one Keras warns that the input "ran out of data".
            ds = ds.unbatch().take(n).batch(64).apply(tf.data.experimental.assert_cardinality(math.ceil(n / 64)))
        # The same elements as ValidationSummaries' predictions: the same graph, traced once.
        embeddings, scores = scoring_embedder(self.model).predict(ds, verbose=0)
        embeddings = np.asarray(embeddings, dtype=np.float32)[:n]
        predicted, _ = self.task.decisions(np.asarray(scores)[:n], self.labels)
        frame = self.manifest.frame.iloc[:n]
        out_dir = os.path.join(self.log_dir, VALIDATION_RUN)
        os.makedirs(out_dir, exist_ok=True)

        checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings, name="fused_embedding"))
        checkpoint.save(os.path.join(out_dir, PROJECTOR_CHECKPOINT))
        with open(os.path.join(out_dir, PROJECTOR_METADATA), "w", encoding="utf-8") as f:
            f.write("label\tpredicted\tcaption\n")
            true = self.task.true_names(self.manifest)[:n]
            for label, pred, caption in zip(true, predicted, frame["text"]):
                f.write(f"{_clean(label)}\t{_clean(pred)}\t{_clean(caption)}\n")

        config = projector.ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = PROJECTOR_TENSOR
        embedding.metadata_path = PROJECTOR_METADATA
        if self.sprite_size and self.sprite_size * math.ceil(math.sqrt(n)) <= 8192:
            _write_sprite(list(frame["image"]), os.path.join(out_dir, PROJECTOR_SPRITE), self.sprite_size)
            embedding.sprite.image_path = PROJECTOR_SPRITE
            embedding.sprite.single_image_dim.extend([self.sprite_size, self.sprite_size])
        projector.visualize_embeddings(out_dir, config)
        logger.info("projector: %d fused embeddings of width %d in %s", n, embeddings.shape[1], out_dir)


def image_log_freq(epochs: int, max_logs: int = MAX_IMAGE_LOGS) -> int:
    """Every how many epochs :class:`ValidationSummaries` draws its images: every epoch for
    runs of up to ``max_logs`` epochs, so that a run draws them at most about ``max_logs``
    times (a 20-label confusion matrix takes seconds to draw; a head's epoch on cached
    features, milliseconds)."""
    return max(1, math.ceil(epochs / max_logs))


def reporting_callbacks(run_dir: str, config: RunConfig, val_ds: Optional[tf.data.Dataset] = None,
                        val_manifest: Optional[Manifest] = None,
                        labels: Optional[Sequence[str]] = None) -> list:
    """The TensorBoard reporting callbacks for a run, writing under ``run_dir/logs``.

    Always the HParams callback; with validation data and a task with
    ``validation_summaries`` (classification, binary, multilabel), also
    :class:`ValidationSummaries` (every :func:`image_log_freq` epochs) and
    :class:`EmbeddingProjector`. Append them after
    ``default_callbacks`` (after EarlyStopping, so the projector sees the restored best weights).

    Example:
        >>> callbacks = default_callbacks(run_dir, config, True) + reporting_callbacks(
        ...     run_dir, config, val_ds, val_manifest, labels)
    """
    log_dir = os.path.join(run_dir, LOGS_DIR)
    has_val = val_ds is not None and val_manifest is not None and labels is not None
    callbacks = [hparams_callback(log_dir, config, has_val=has_val)]
    task = get_task(config.model.task)
    if has_val and task.validation_summaries:  # else scalars and hparams only
        callbacks += [
            ValidationSummaries(log_dir, val_ds, val_manifest, labels, task=task,
                                freq=image_log_freq(config.train.epochs or 1)),
            EmbeddingProjector(log_dir, val_ds, val_manifest, labels, task=task),
        ]
    return callbacks
