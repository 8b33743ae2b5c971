"""``classification``: one label per row among C, a softmax over the classes.

Targets are one-hot; ``fit`` shows accuracy, top-1 precision / recall and macro F1;
``metrics.json`` holds the metrics of :func:`tfmm.tasks.metrics.compute_metrics` (every number
traceable to the confusion matrix), and for a calibrated run (``calibration.json``) the
calibration keys (``ece``, ``brier``, ``nll``, their ``_uncalibrated`` versions,
``temperature``); ``predict`` gives the top-k labels; the signature returns ``scores`` and
``labels`` (``[B, C]``, class names in score order). Evaluation, prediction and the signature
all give the temperature-scaled scores of a calibrated run.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm.data.labels import ONE_HOT
from tfmm.models.heads import build_dense_head
from tfmm.tasks.base import Evaluation, Task, calibration_line, tiled_labels
from tfmm.tasks.metrics import compute_metrics, top_k

# The headline metrics of the summary (those present are shown, in this order).
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                "f1_weighted", "roc_auc", "pr_auc")


def format_value(value, width: int = 8) -> str:
    """A metric for a text table: 4 decimals, ``n/a`` for ``None``."""
    if value is None:
        return "n/a".rjust(width)
    if isinstance(value, float):
        return f"{value:.4f}".rjust(width)
    return str(value).rjust(width)


class ClassificationTask(Task):
    """Single-label classification (softmax over the labels)."""

    name = "classification"
    encoding = ONE_HOT
    activation = "softmax"
    calibration_activation = "softmax"

    def build_head(self, config, feature_dims: dict) -> keras.Model:
        return build_dense_head(config, feature_dims, units=self.output_units(config.model.num_classes),
                                activation=self.activation)

    def loss(self, config):
        return keras.losses.CategoricalCrossentropy()

    def metrics(self, config) -> list:
        return [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.Precision(top_k=1, name="precision"),
            keras.metrics.Recall(top_k=1, name="recall"),
            keras.metrics.F1Score(average="macro", name="f1"),
        ]

    def class_scores(self, scores: np.ndarray) -> np.ndarray:
        """``[N, C]`` per-class scores from the model's output."""
        return np.asarray(scores)

    def class_ids(self, manifest, labels: Sequence[str]) -> np.ndarray:
        """``[N]`` integer class ids of a labeled manifest."""
        return self.encoding.class_ids(self.encode_targets(manifest, labels))

    def evaluate_scores(self, run, manifest, scores) -> Evaluation:
        scores = np.asarray(scores)
        calibrated = self.calibrated(run, scores)
        y_true = self.class_ids(manifest, run.labels)
        metrics = {"task": self.name,
                   **compute_metrics(y_true, self.class_scores(calibrated).argmax(axis=1), run.labels)}
        calibration, reliability = self.calibration_metrics(run, scores, calibrated, y_true)
        return Evaluation({**metrics, **calibration}, curves={"reliability": reliability} if reliability else {})

    def summary(self, metrics: dict) -> str:
        keys = [k for k in SUMMARY_KEYS if k in metrics]
        width = max(len(k) for k in keys) + 2
        head = f"{metrics['n_examples']} examples"
        if metrics.get("positive_label") is not None:
            head += f" (positive label: {metrics['positive_label']})"
        lines = [head] + [k.ljust(width) + format_value(metrics[k]) for k in keys]
        return "\n".join(lines + [line for line in [calibration_line(metrics)] if line])

    def prediction_values(self, run, manifest, *, k: int) -> list:
        scores = self.class_scores(self.calibrated(run, run.predict_scores(manifest)))
        return [{"labels": names, "scores": values}
                for names, values in top_k(scores, run.labels, min(k, len(run.labels)))]

    def serving_outputs(self, run):
        labels = list(run.labels)
        calibrated = self.calibrated_tensor(run)

        def outputs(features: dict) -> dict:
            scores = self.serving_scores(calibrated(run.model(features, training=False)))
            return {"scores": scores, "labels": tiled_labels(labels, scores)}

        return outputs

    def serving_scores(self, scores: tf.Tensor) -> tf.Tensor:
        """The signature's ``scores`` from the (calibrated) model output (one column per label)."""
        return tf.cast(scores, tf.float32)
