"""``multilabel``: any number of labels per row (``|``-separated), one sigmoid score per label.

After ``fit`` each label's decision threshold is tuned for F1 on the validation data and saved
(``thresholds.json``); evaluation, prediction, the TensorBoard examples and the signature's
``predicted`` all decide with them (``score >= threshold``). ``metrics.json``: subset
``accuracy``, ``hamming_loss``, micro / macro / weighted precision, recall and F1,
``per_class`` (with ``roc_auc`` and ``threshold``) and a per-label ``confusion_matrix``.
The scores are not temperature-scaled: the per-label thresholds already set each decision.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmm.data.labels import MULTI_HOT, MULTILABEL_SEP
from tfmm.models.heads import build_dense_head
from tfmm.tasks.base import Evaluation, Task, tiled_labels
from tfmm.tasks.binary import sigmoid_metrics
from tfmm.tasks.metrics import multilabel_metrics, roc_auc, top_k
from tfmm.tasks.thresholds import DEFAULT_THRESHOLD, load_thresholds, tune_thresholds


class MultilabelTask(Task):
    """Multi-label classification (sigmoid per label, tuned thresholds)."""

    name = "multilabel"
    encoding = MULTI_HOT
    single_label = False
    uncalibrated_reason = "one sigmoid per label, decided by the thresholds tuned per label"
    serving_output_names = ("scores", "labels", "predicted")
    serving_decisions = {"predicted": "scores"}

    def build_head(self, config, feature_dims: dict) -> keras.Model:
        return build_dense_head(config, feature_dims, units=self.output_units(config.model.num_classes),
                                activation="sigmoid")

    def loss(self, config):
        return keras.losses.BinaryCrossentropy()

    def metrics(self, config) -> list:
        return sigmoid_metrics()

    def tune_thresholds(self, targets, scores):
        return tune_thresholds(targets, scores)

    def threshold_names(self, labels) -> list:
        return list(labels)

    def decisions(self, scores, labels, thresholds=None) -> tuple:
        scores = np.asarray(scores)
        cut = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds)
        names = [MULTILABEL_SEP.join(labels[j] for j in np.flatnonzero(row)) or "(none)" for row in scores >= cut]
        return names, scores.max(axis=1).tolist()

    def evaluate_scores(self, run, manifest, scores) -> Evaluation:
        thresholds = load_thresholds(run.run_dir, run.labels)
        y_true = self.encode_targets(manifest, run.labels)
        metrics = multilabel_metrics(y_true, scores >= thresholds, run.labels)
        for i, label in enumerate(run.labels):
            metrics["per_class"][label]["roc_auc"] = roc_auc(y_true[:, i], scores[:, i])
            metrics["per_class"][label]["threshold"] = float(thresholds[i])
        return Evaluation(metrics)

    def summary(self, metrics: dict) -> str:
        return (f"multilabel: micro F1 {metrics['f1_micro']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
                f"exact-match accuracy {metrics['accuracy']:.4f}, hamming loss {metrics['hamming_loss']:.4f}")

    def prediction_values(self, run, manifest, *, k: int) -> list:
        scores = run.predict_scores(manifest)
        thresholds = load_thresholds(run.run_dir, run.labels)
        ranked = top_k(scores, run.labels, min(k, len(run.labels)))
        return [{"labels": names, "scores": values,
                 "predicted": [run.labels[j] for j in np.flatnonzero(row >= thresholds)]}
                for row, (names, values) in zip(scores, ranked)]

    def serving_outputs(self, run):
        labels = list(run.labels)
        thresholds = tf.constant(np.asarray(load_thresholds(run.run_dir, labels), dtype="float32"))

        def outputs(features: dict) -> dict:
            scores = tf.cast(run.model(features, training=False), tf.float32)
            return {"scores": scores, "labels": tiled_labels(labels, scores),
                    "predicted": scores >= thresholds[None, :]}

        return outputs
