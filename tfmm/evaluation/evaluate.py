"""Evaluation and prediction on a trained run directory, dispatched to the run's task.

``evaluate`` scores a labeled manifest and writes the report (``metrics.json``, per-class
CSV, plots; see :mod:`tfmm.evaluation.reports`), optionally with a modality ablation
(:mod:`tfmm.evaluation.ablation`); ``predict`` gives each row's prediction. What the metrics
and predictions hold is the task's (:mod:`tfmm.tasks`).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from tfmm.evaluation import reports
from tfmm.evaluation.ablation import modality_ablation
from tfmm.run_dir import ABLATION_FILE, EVAL_LOGS_DIR, RELIABILITY_FILE, LoadedRun, load_run
from tfmm.tasks import get_task, zero_shot

logger = logging.getLogger(__name__)


def evaluate(run, data, *, report_dir: Optional[str] = None, ablate: bool = False,
             blank_image: str = "zeros") -> dict:
    """Scores a labeled manifest with a trained run and writes the report files.

    Writes ``metrics.json``, and as the task's metrics allow ``per_class.csv``,
    ``confusion_matrix.png``, ``roc_curve.png``, ``pr_curve.png`` and, for a calibrated run,
    ``reliability.png`` (also the TensorBoard image ``reliability_diagram`` under the run's
    ``logs/eval``); with ``ablate``, also ``ablation.json`` (see
    :func:`tfmm.evaluation.ablation.modality_ablation`). The scores evaluated are those the
    run serves: temperature-scaled when the run has a ``calibration.json``.

    Args:
        run: a run directory or a :class:`LoadedRun`.
        data: a labeled manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`);
            matching runs trained with ``--negatives`` also take positive pairs only, and
            contrastive runs unlabeled pairs.
        report_dir: where the report files go (default: the run directory).
        ablate: also re-score with the image blanked and with the text blanked.
        blank_image: how the image is blanked for ``ablate``: ``zeros`` or ``mean``.

    Returns:
        The metrics dict, as written to ``metrics.json`` (``task``, ``n_examples`` and the
        task's metrics; classification: ``accuracy``, ``precision_macro``, ``recall_macro``,
        ``f1_macro``, ``per_class``, ``confusion_matrix``, ...; a calibrated run adds ``ece``,
        ``brier``, ``nll`` of the served scores, ``ece_uncalibrated``, ``brier_uncalibrated``,
        ``nll_uncalibrated`` of the model's, and ``temperature``);
        with ``ablate``, plus an ``ablation`` key holding what ``ablation.json`` holds.

    Raises:
        tfmm.data.ManifestError: bad rows, or labels the model does not know.

    Example:
        >>> metrics = tfmm.evaluate("runs/a", "data/test.csv", report_dir="reports/a", ablate=True)
        >>> metrics["f1_macro"], metrics["ablation"]["drop"]["text_blanked"]["accuracy"]
    """
    run = run if isinstance(run, LoadedRun) else load_run(run)
    task = get_task(run.config.model.task)
    manifest = task.read_for_evaluation(run, data)
    evaluation = task.evaluate(run, manifest)
    metrics = evaluation.metrics
    out_dir = report_dir or run.run_dir
    written = reports.write_report(metrics, out_dir, curves=evaluation.curves)
    reliability = os.path.join(out_dir, RELIABILITY_FILE)
    if reliability in written:  # a calibrated run: its diagram in TensorBoard too
        with open(reliability, "rb") as f:
            reports.write_tensorboard_png(os.path.join(run.run_dir, EVAL_LOGS_DIR), "reliability_diagram", f.read())
    logger.info("evaluated %d rows: %s", metrics["n_examples"], task.summary(metrics).splitlines()[0])
    if ablate:
        ablation = modality_ablation(run, manifest, full_metrics=metrics, blank_image=blank_image)
        reports.write_json(ablation, os.path.join(out_dir, ABLATION_FILE))
        metrics = {**metrics, "ablation": ablation}
    return metrics


def predict(run, data, *, k: int = 5, zero_shot_labels: Optional[Sequence[str]] = None,
            prompt: Optional[str] = None) -> list:
    """Predictions for every row of a manifest (labels optional).

    Args:
        run: a run directory or a :class:`LoadedRun`.
        data: a manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`).
        k: labels per row.
        zero_shot_labels: contrastive runs: classify the images among these labels
            (see :func:`tfmm.tasks.zero_shot.zero_shot_predict`).
        prompt: the zero-shot prompt template (default ``"a photo of a {}"``).

    Returns:
        One dict per row, in order: ``row``, ``true_label`` when the manifest has one, and
        the task's keys: ``labels``/``scores`` (top ``k``) for classification and binary;
        plus ``predicted`` for multilabel; ``match_score``/``match`` for matching;
        ``similarity``/``image_embedding``/``text_embedding`` for contrastive.
    """
    if prompt is not None and zero_shot_labels is None:
        raise ValueError(f"prompt is only used with zero_shot_labels; received prompt {prompt!r} and no labels")
    run = zero_shot.as_run(run)  # a run, its folder, or a clip:/siglip: preset (used as it is)
    task = get_task(run.config.model.task)
    if zero_shot_labels is not None:
        return task.zero_shot(run, data, zero_shot_labels, prompt=prompt, k=k)
    return task.predict(run, data, k=k)
