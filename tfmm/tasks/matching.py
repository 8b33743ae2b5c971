"""``matching``: does the caption describe the image? One sigmoid ``match_score`` per pair.

Labels are ``1`` (the caption matches) and ``0``; a manifest of positive pairs only gets
seeded negatives with ``--negatives N`` (:func:`tfmm.data.pairs.add_negatives`), in
training and, for runs trained so, in evaluation. The head feeds an MLP with interaction
features of the two projected embeddings (:func:`tfmm.models.pair_heads.build_matching_head`).
After ``fit`` the temperature of the match score is fitted (``calibration.json``), then the
decision threshold is tuned for F1 on the calibrated scores (``thresholds.json``).
``metrics.json``: ``accuracy``, ``roc_auc``, ``f1``, ``precision``, ``recall`` at that
``threshold``, the 2-class numbers of :func:`tfmm.tasks.metrics.compute_metrics` (labels
``0``, ``1``) and, for a calibrated run, the calibration keys (``ece``, ``brier``, ... as for
classification).
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from tfmm.data import pairs
from tfmm.data.labels import INDEX
from tfmm.models.pair_heads import build_matching_head
from tfmm.tasks.base import Evaluation, Task, calibration_line
from tfmm.tasks.binary import sigmoid_metrics
from tfmm.tasks.metrics import compute_metrics, matching_metrics, ranking_curves
from tfmm.tasks.thresholds import DEFAULT_THRESHOLD, load_thresholds, tune_thresholds

logger = logging.getLogger(__name__)

MATCH_LABELS = ("0", "1")  # labels[1] is the positive class, as for task "binary"


class MatchingTask(Task):
    """Image-caption matching (binary, with an interaction head and a tuned threshold)."""

    name = "matching"
    encoding = INDEX
    fixed_labels = MATCH_LABELS
    validation_summaries = False  # no fusion layer to project
    serving_output_names = ("match_score", "match")
    serving_decisions = {"match": "match_score"}
    calibration_activation = "sigmoid"

    def labels_required(self, config) -> bool:
        """Not when ``--negatives`` makes the negatives of a positives-only manifest."""
        return config.data.negatives == 0

    def prepare_manifest(self, manifest, config, *, seed: int):
        """Adds ``data.negatives`` negatives per positive (labels ``1`` when the manifest has none).

        Raises:
            ValueError: a manifest without labels and ``negatives`` 0.
        """
        negatives = config.data.negatives
        if not manifest.has_labels and not negatives:
            raise ValueError(
                f"{manifest.source}: task 'matching' needs a label column (1: the caption "
                "matches the image, 0: it does not) or --negatives N to generate negatives"
            )
        if negatives:
            return pairs.add_negatives(manifest, negatives, seed=seed)
        if pairs.only_positives(manifest):
            logger.warning("%s: every pair is labeled 1 (a match); the model cannot learn to "
                           "reject captions. Add rows labeled 0 or pass --negatives N.", manifest.source)
        return manifest

    def output_units(self, num_classes: int) -> int:
        if num_classes != 2:
            raise ValueError(f"task 'matching' needs the 2 labels 0 and 1; received {num_classes} label(s)")
        return 1

    def build_head(self, config, feature_dims: dict) -> keras.Model:
        self.output_units(config.model.num_classes)
        return build_matching_head(config, feature_dims)

    def loss(self, config):
        return keras.losses.BinaryCrossentropy()

    def metrics(self, config) -> list:
        return sigmoid_metrics(auc=True, f1_average="micro")

    def tune_thresholds(self, targets, scores):
        return tune_thresholds(targets, scores)

    def threshold_names(self, labels) -> list:
        return [labels[1]]

    def threshold(self, run) -> float:
        """The run's tuned decision threshold (0.5 when none was saved)."""
        return float(load_thresholds(run.run_dir, [run.labels[1]])[0])

    def decisions(self, scores, labels, thresholds=None) -> tuple:
        s = np.asarray(scores)[:, 0]
        match = s >= (DEFAULT_THRESHOLD if thresholds is None else float(np.asarray(thresholds).ravel()[0]))
        return [labels[int(m)] for m in match], s.tolist()

    def read_for_evaluation(self, run, data):
        """The checked manifest, with generated negatives when it holds positives only and the
        run was trained with ``--negatives`` (seeded apart from the training and validation draws)."""
        manifest = super().read_for_evaluation(run, data)
        negatives = run.config.data.negatives
        if not pairs.only_positives(manifest):
            return manifest
        if not negatives:
            if not manifest.has_labels:
                raise ValueError(
                    f"{manifest.source}: evaluating a matching run needs a label column (0/1), or a run "
                    "trained with --negatives N (its negatives are then generated the same way)"
                )
            logger.warning("%s: every pair is labeled 1: roc_auc is undefined", manifest.source)
            return manifest
        return pairs.add_negatives(manifest, negatives, seed=run.config.train.seed + 2)

    def evaluate_scores(self, run, manifest, scores) -> Evaluation:
        scores = np.asarray(scores)
        calibrated = self.calibrated(run, scores)
        s = calibrated[:, 0]
        threshold = self.threshold(run)
        y_true = self.encoding.class_ids(self.encode_targets(manifest, run.labels))
        calibration, reliability = self.calibration_metrics(run, scores, calibrated, y_true)
        metrics = {**compute_metrics(y_true, (s >= threshold).astype(int), run.labels),
                   **matching_metrics(y_true, s, threshold), **calibration,
                   # add_negatives gives a negative the row number of the positive it comes from
                   "generated_negatives": int(len(manifest) - manifest.frame["row"].nunique())}
        curves = ranking_curves(y_true, s, run.labels[1])
        return Evaluation(metrics, curves={**curves, "reliability": reliability} if reliability else curves)

    def summary(self, metrics: dict) -> str:
        auc = metrics["roc_auc"]
        return (f"matching: accuracy {metrics['accuracy']:.4f}, ROC-AUC "
                f"{'n/a' if auc is None else f'{auc:.4f}'}, F1 {metrics['f1']:.4f} at threshold "
                f"{metrics['threshold']:.4f} ({metrics['n_positive']} of {metrics['n_examples']} pairs match)"
                + "".join(f"\n{line}" for line in [calibration_line(metrics)] if line))

    def prediction_values(self, run, manifest, *, k: int) -> list:
        threshold = self.threshold(run)
        return [{"match_score": float(s), "match": bool(s >= threshold)}
                for s in self.calibrated(run, run.predict_scores(manifest))[:, 0]]

    def serving_outputs(self, run):
        threshold = tf.constant(self.threshold(run), tf.float32)
        calibrated = self.calibrated_tensor(run)

        def outputs(features: dict) -> dict:
            match_score = calibrated(run.model(features, training=False))[:, 0]
            return {"match_score": match_score, "match": match_score >= threshold}

        return outputs
