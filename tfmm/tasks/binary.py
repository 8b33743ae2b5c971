"""``binary``: two labels, one sigmoid score for the second (``labels[1]``, the positive class).

Targets are ``[N, 1]`` 0/1; evaluation adds ROC-AUC, PR-AUC and their curves to the
single-label metrics; ``predict`` and the signature give both classes' scores (``1 - s``, ``s``),
``s`` temperature-scaled in a calibrated run (``sigmoid(logit / T)``).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmm.data.labels import INDEX
from tfmm.tasks.base import Evaluation
from tfmm.tasks.classification import ClassificationTask
from tfmm.tasks.metrics import average_precision, ranking_curves, roc_auc
from tfmm.tasks.thresholds import DEFAULT_THRESHOLD


def sigmoid_metrics(*, auc: bool = False, f1_average: str = "macro") -> list:
    """``fit`` metrics of sigmoid outputs at the 0.5 threshold: accuracy, [ROC-AUC,] precision,
    recall and F1 (shared by binary, multilabel and matching)."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        *([keras.metrics.AUC(name="auc")] if auc else []),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.F1Score(average=f1_average, threshold=DEFAULT_THRESHOLD, name="f1"),
    ]


class BinaryTask(ClassificationTask):
    """Two-class classification with one sigmoid output."""

    name = "binary"
    encoding = INDEX
    activation = "sigmoid"
    calibration_activation = "sigmoid"

    def output_units(self, num_classes: int) -> int:
        """1; raises unless there are exactly 2 labels."""
        if num_classes != 2:
            raise ValueError(f"task 'binary' needs exactly 2 labels; received {num_classes}")
        return 1

    def loss(self, config):
        return keras.losses.BinaryCrossentropy()

    def metrics(self, config) -> list:
        return sigmoid_metrics()

    def class_scores(self, scores: np.ndarray) -> np.ndarray:
        """``[N, 1]`` sigmoid -> ``[N, 2]`` (negative, positive)."""
        scores = np.asarray(scores)
        return np.concatenate([1.0 - scores, scores], axis=1)

    def evaluate_scores(self, run, manifest, scores) -> Evaluation:
        evaluation = super().evaluate_scores(run, manifest, scores)
        positive = self.class_ids(manifest, run.labels) == 1
        s = self.calibrated(run, scores)[:, 0]  # the ranking, so the AUCs, are the model's
        evaluation.metrics.update(positive_label=run.labels[1], roc_auc=roc_auc(positive, s),
                                  pr_auc=average_precision(positive, s))
        evaluation.curves.update(ranking_curves(positive, s, run.labels[1]))
        return evaluation

    def decisions(self, scores, labels, thresholds=None) -> tuple:
        return super().decisions(self.class_scores(scores), labels)  # as evaluated: the larger score

    def serving_scores(self, scores: tf.Tensor) -> tf.Tensor:
        scores = tf.cast(scores, tf.float32)
        return tf.concat([1.0 - scores, scores], axis=1)
