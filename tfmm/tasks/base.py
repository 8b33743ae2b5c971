"""``Task``: everything that differs between tasks, behind one small interface.

A task says how a manifest's labels become targets (its :class:`~tfmm.data.labels.LabelEncoding`
and label vocabulary), which head, loss and ``fit`` metrics the model gets, what happens after
``fit`` (threshold tuning), how a run is evaluated (the metrics of ``metrics.json``, the curves
of the report, the summary the CLI prints), what ``predict`` returns per row, and the outputs
of the serving signature. Training, evaluation and serving call these methods and never ask
which task they hold.

Methods a task implements (the rest have defaults that fit single-label classification):

- ``output_units(num_classes)``: the head's width; raises on a wrong number of labels;
- ``build_head(config, feature_dims)``: the ``fusion_head`` model;
- ``loss(config)``, ``metrics(config)``: for ``model.compile``;
- ``evaluate_scores(run, manifest, scores)``: an :class:`Evaluation` from the model's scores;
- ``summary(metrics)``: the lines ``tfmm evaluate`` prints;
- ``prediction_values(run, manifest, scores, k)``: the task's keys of each predicted row;
- ``serving_outputs(run)``: model features -> the signature's named outputs;
- ``decisions(scores, labels, thresholds)``: names and scores shown in TensorBoard.

After ``fit`` (:meth:`Task.after_fit`) a task whose scores are one softmax or sigmoid
decision (:attr:`Task.calibration_activation`: classification, binary, matching) fits a
temperature on the validation scores (``calibration.json``, when ``train.calibrate`` is on);
tasks with decision thresholds (multilabel, matching) then tune them on the calibrated
scores (``thresholds.json``). One ``predict`` pass over the validation data serves both.
``scores`` passed to a task are always the model's outputs: the task applies the run's
temperature itself (:meth:`Task.calibrated`), in evaluation, prediction and serving alike.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmm.config import RunConfig
from tfmm.data.labels import ONE_HOT, LabelEncoding
from tfmm.data.manifest import Manifest, check_manifest, read_manifest
# A leaf module (numpy, scipy, scikit-learn, TensorFlow; no other tfmm import): the math of
# the temperature the tasks fit and apply.
from tfmm.evaluation import calibration
from tfmm.files import write_json_atomic
from tfmm.run_dir import CALIBRATION_FILE, LoadedRun
from tfmm.tasks.thresholds import tune_and_save

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Evaluation:
    """What a task's evaluation gives the report writer.

    Attributes:
        metrics: the dict written to ``metrics.json`` (``task`` and ``n_examples`` always).
        curves: ``{"roc": {label: (fpr, tpr, auc)}, "pr": {label: (recall, precision, ap)},
            "reliability": {"uncalibrated" | "calibrated": (confidence, accuracy, ece)}}`` for
            the report's ROC / PR plots and reliability diagram (empty: none).
    """

    metrics: dict
    curves: dict = dataclasses.field(default_factory=dict)


def prediction_records(manifest: Manifest, values: Sequence[dict]) -> list:
    """One dict per row: ``row``, the task's ``values``, and ``true_label`` (stripped) when the
    manifest has a non-empty label for the row."""
    records = []
    for rec, extra in zip(manifest.frame.itertuples(index=False), values):
        out = {"row": int(rec.row), **extra}
        if manifest.has_labels and rec.label.strip():
            out["true_label"] = rec.label.strip()
        records.append(out)
    return records


class Task:
    """The interface every task implements (see the module docstring).

    Attributes:
        name: the task's name (``--task``, ``config.model.task``).
        encoding: how the label column becomes targets.
        fixed_labels: the labels the task fixes in advance (``None``: read from the data).
        validation_summaries: TensorBoard gets the per-epoch validation examples (and
            confusion matrix) and the projector of fused embeddings (a ``fusion`` layer and
            one score row per example are needed).
        single_label: each row has one class (TensorBoard shows a confusion matrix).
        calibration_activation: ``"softmax"`` / ``"sigmoid"``: the model's output, whose
            temperature is fitted after ``fit``; ``None``: the task's scores are not calibrated.
        uncalibrated_reason: why not, for the log.
        in_batch_negatives: the loss takes the batch's other rows as negatives, so training rows
            must not be repeated (``--feature-views`` is refused).
    """

    name: str = ""
    encoding: LabelEncoding = ONE_HOT
    fixed_labels: Optional[tuple] = None
    validation_summaries: bool = True
    single_label: bool = True
    calibration_activation: Optional[str] = None
    uncalibrated_reason: str = "its scores are not one softmax or sigmoid decision"
    in_batch_negatives: bool = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ data
    def labels_required(self, config: RunConfig) -> bool:
        """Whether a training (or evaluation) manifest must have a label column."""
        return True

    def label_vocab(self, manifest: Manifest) -> list:
        """The run's labels: :attr:`fixed_labels`, else the sorted labels of ``manifest``."""
        if self.fixed_labels is not None:
            return list(self.fixed_labels)
        return self.encoding.vocabulary(manifest.frame)

    def prepare_manifest(self, manifest: Manifest, config: RunConfig, *, seed: int) -> Manifest:
        """Readies a checked training / validation manifest (pair tasks add negatives).

        Raises:
            ValueError: ``data.negatives`` is set for a task that does not make negatives.
        """
        if config.data.negatives:
            raise ValueError(f"negatives only applies to task 'matching'; received task {self.name!r} "
                             f"with negatives={config.data.negatives}")
        return manifest

    def encode_targets(self, manifest: Manifest, labels: Sequence[str]) -> np.ndarray:
        """The training targets of every row (see :class:`~tfmm.data.labels.LabelEncoding`)."""
        return self.encoding.encode(manifest.frame, labels)

    # ------------------------------------------------------------------ model
    def output_units(self, num_classes: int) -> int:
        """Width of the head's output: one unit per class.

        Raises:
            ValueError: fewer than 2 labels.
        """
        if num_classes < 2:
            raise ValueError(f"task {self.name!r} needs at least 2 labels; received {num_classes}")
        return num_classes

    def build_head(self, config: RunConfig, feature_dims: dict) -> keras.Model:
        """The ``fusion_head`` model: ``{image_features, text_features}`` -> the task's output."""
        raise NotImplementedError

    def loss(self, config: RunConfig):
        raise NotImplementedError

    def metrics(self, config: RunConfig) -> list:
        raise NotImplementedError

    # ------------------------------------------------------------------ after fit
    def tune_thresholds(self, targets: np.ndarray, scores: np.ndarray) -> Optional[np.ndarray]:
        """Decision thresholds tuned on ``(targets, scores)``; ``None`` for tasks without."""
        return None

    def threshold_names(self, labels: Sequence[str]) -> Optional[list]:
        """What the thresholds tuned after ``fit`` are for (``None``: the task has none)."""
        return None

    def after_fit(self, model: keras.Model, val_ds, val_targets: Optional[np.ndarray], run_dir: str,
                  labels: Sequence[str], *, calibrate: bool = True) -> None:
        """Runs once the model is trained and saved: calibrates (``calibration.json``, when
        ``calibrate``: the run's ``train.calibrate``), then tunes the decision thresholds on the
        calibrated scores (``thresholds.json``)."""
        calibrate = self._calibration_wanted(run_dir, calibrate)
        names = self.threshold_names(labels)
        if not calibrate and names is None:
            return
        has_val = val_ds is not None and val_targets is not None
        scores = validation_scores(model, val_ds) if has_val else None
        if calibrate:
            scores = self.fit_calibration(scores, val_targets, run_dir)
        if names is not None:
            tune_and_save(scores, val_targets, run_dir, names)

    def _calibration_wanted(self, run_dir: str, wanted: bool) -> bool:
        """Whether to fit a temperature: ``wanted`` (``train.calibrate``), for a task with
        :attr:`calibration_activation`. A file from an earlier fit is removed."""
        path = os.path.join(run_dir, CALIBRATION_FILE)
        if os.path.exists(path):
            os.remove(path)
        if wanted and self.calibration_activation is None:
            logger.info("task %r: scores are not calibrated (%s)", self.name, self.uncalibrated_reason)
        return bool(wanted and self.calibration_activation is not None)

    def fit_calibration(self, scores: Optional[np.ndarray], targets: Optional[np.ndarray],
                        run_dir: str) -> Optional[np.ndarray]:
        """Fits the temperature on validation ``scores`` (the model's outputs), writes
        ``calibration.json`` and returns the calibrated scores (``scores`` unchanged and no
        file without validation data or with non-finite scores)."""
        if scores is None:
            logger.info("no validation data: scores are not calibrated (temperature 1)")
            return scores
        report = calibration.fit_report(scores, targets, self.calibration_activation)
        if report is None:
            logger.warning("validation scores are empty or not finite: scores are not calibrated")
            return scores
        write_json_atomic(os.path.join(run_dir, CALIBRATION_FILE), {
            **report, "fitted_on": "validation data", "method": "temperature scaling",
            "rule": f"served scores = {self.calibration_activation}(logits / temperature), the logits "
                    f"recovered from the model's {self.calibration_activation} outputs"})
        before, after = report["before"], report["after"]
        logger.info("calibration: temperature %.4f fitted on %d validation rows; NLL %.4f -> %.4f, "
                    "ECE %.4f -> %.4f, Brier %.4f -> %.4f", report["temperature"], report["n_rows"],
                    before["nll"], after["nll"], before["ece"], after["ece"], before["brier"], after["brier"])
        return calibration.scale_probabilities(scores, report["temperature"], self.calibration_activation)

    def calibrated(self, run: LoadedRun, scores: np.ndarray) -> np.ndarray:
        """The model's ``scores`` scaled by the run's temperature (unchanged without one)."""
        temperature = run_temperature(run)
        if temperature == 1.0 or self.calibration_activation is None:
            return np.asarray(scores)
        return calibration.scale_probabilities(scores, temperature, self.calibration_activation)

    def calibrated_tensor(self, run: LoadedRun) -> Callable[[tf.Tensor], tf.Tensor]:
        """``model output -> calibrated float32 scores`` in graph ops (the serving signature)."""
        temperature = run_temperature(run)
        if temperature == 1.0 or self.calibration_activation is None:
            return lambda scores: tf.cast(scores, tf.float32)
        return lambda scores: calibration.scale_probabilities_tf(scores, temperature, self.calibration_activation)

    def calibration_metrics(self, run: LoadedRun, scores: np.ndarray, calibrated: np.ndarray,
                            targets: np.ndarray) -> tuple:
        """``(metrics, reliability curves)`` of the model's and the calibrated scores (see
        :func:`tfmm.evaluation.calibration.compare_calibration`); ``({}, {})`` for a run
        without ``calibration.json``, whose evaluation stays as it was."""
        if getattr(run, "calibration", None) is None or self.calibration_activation is None:
            return {}, {}
        return calibration.compare_calibration(scores, calibrated, targets, temperature=run_temperature(run))

    def decisions(self, scores: np.ndarray, labels: Sequence[str], thresholds=None) -> tuple:
        """``(names, scores)``: what the model predicts for each row, as TensorBoard shows it."""
        scores = np.asarray(scores)
        return [labels[j] for j in scores.argmax(axis=1)], scores.max(axis=1).tolist()

    def true_names(self, manifest: Manifest) -> list:
        """Each row's label(s) as one string (sorted, ``|``-joined)."""
        return ["|".join(sorted(self.encoding.split(v))) for v in manifest.frame["label"]]

    # ------------------------------------------------------------------ evaluation
    def read_for_evaluation(self, run: LoadedRun, data) -> Manifest:
        """The checked manifest that :meth:`evaluate` scores (labels as the task needs them)."""
        manifest = data if isinstance(data, Manifest) else read_manifest(
            data, run.config.data, require_labels=self.labels_required(run.config))
        return check_manifest(manifest, encoding=self.encoding, labels=run.labels,
                              skip_bad_rows=run.config.data.skip_bad_rows, config=run.config.data)

    def evaluate(self, run: LoadedRun, manifest: Manifest) -> Evaluation:
        """Scores a checked manifest with the run's model: :meth:`evaluate_scores`."""
        return self.evaluate_scores(run, manifest, run.predict_scores(manifest))

    def evaluate_scores(self, run: LoadedRun, manifest: Manifest, scores: np.ndarray) -> Evaluation:
        """The evaluation of the model's ``scores`` of every row of ``manifest``."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """The headline lines ``tfmm evaluate`` prints for ``metrics``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ prediction
    def predict(self, run: LoadedRun, data, *, k: int = 5) -> list:
        """Per-row predictions: ``row``, :meth:`prediction_values`, ``true_label`` when known."""
        manifest = data if isinstance(data, Manifest) else read_manifest(data, run.config.data, require_labels=False)
        manifest = check_manifest(manifest, encoding=self.encoding, skip_bad_rows=run.config.data.skip_bad_rows,
                                  config=run.config.data)
        return prediction_records(manifest, self.prediction_values(run, manifest, k=k))

    def prediction_values(self, run: LoadedRun, manifest: Manifest, *, k: int) -> list:
        """The task's keys of each row's prediction."""
        raise NotImplementedError

    def zero_shot(self, run: LoadedRun, data, labels: Sequence[str], *, prompt: Optional[str], k: int) -> list:
        """Zero-shot classification of a manifest's images (tasks with a shared image-text space)."""
        raise ValueError(
            "zero-shot labels need a run trained with --task contrastive (a shared image-text "
            f"space); received a run of task {self.name!r}"
        )

    # ------------------------------------------------------------------ serving
    serving_output_names: tuple = ("scores", "labels")
    # Boolean outputs that threshold a score output, {decision: score}: the export check lets
    # a decision flip where the score's rounding crosses the threshold.
    serving_decisions: dict = {}

    def serving_outputs(self, run: LoadedRun) -> Callable[[dict], dict]:
        """``features -> {name: tensor}``: the signature's outputs (in graph and eagerly)."""
        raise NotImplementedError

    def serving_endpoints(self, run: LoadedRun, outputs: Callable) -> dict:
        """Extra signatures ``{name: (fn, input_signature)}`` (e.g. embeddings); none by default."""
        return {}


def validation_scores(model: keras.Model, val_ds) -> np.ndarray:
    """The model's outputs over ``val_ds`` (``(features, targets)`` batches, in order), one
    eager call per batch: unlike ``model.predict``, nothing is traced for this single pass
    (tracing the model costs seconds, and a last, smaller batch traces it again)."""
    batches = [model(batch[0] if isinstance(batch, tuple) else batch, training=False) for batch in val_ds]
    return np.concatenate([np.asarray(b, dtype="float32") for b in batches]) if batches else np.zeros((0, 1), "float32")


def run_temperature(run) -> float:
    """The run's fitted temperature (1.0 for runs without ``calibration.json``)."""
    return float(getattr(run, "temperature", 1.0))


def calibration_line(metrics: dict) -> Optional[str]:
    """The summary line of a metrics dict's calibration keys (``None`` without them)."""
    if "ece" not in metrics:
        return None
    t = metrics["temperature"]
    return (f"calibration: ECE {metrics['ece']:.4f} (uncalibrated {metrics['ece_uncalibrated']:.4f}), Brier "
            f"{metrics['brier']:.4f} (uncalibrated {metrics['brier_uncalibrated']:.4f}), "
            + (f"temperature {t:.4f}" if t != 1.0 else "temperature 1 (not calibrated)"))


def tiled_labels(labels: Sequence[str], scores: tf.Tensor) -> tf.Tensor:
    """``[B, C]`` string tensor: the label names in score order, once per row of ``scores``."""
    names = tf.constant(list(labels) or [""], dtype=tf.string)
    return tf.tile(names[tf.newaxis], [tf.shape(scores)[0], 1])


def pad_empty(tensor: tf.Tensor, fill) -> tf.Tensor:
    """``tensor`` with one ``fill`` row appended when it has none (oneDNN convolutions fail on
    0 rows); callers keep the first ``n`` rows of the result."""
    pad = tf.maximum(1 - tf.shape(tensor)[0], 0)
    fill = tf.cast(fill, tensor.dtype)
    return tf.concat([tensor, tf.fill(tf.concat([[pad], tf.shape(tensor)[1:]], 0), fill)], 0)
