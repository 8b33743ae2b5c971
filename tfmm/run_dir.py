"""The run directory: every file name ``train`` writes and others read, and loading a run.

A run directory (``--output-dir``) holds ``config.yaml`` (everything needed to rebuild),
``labels.txt``, ``checkpoints/``, ``logs/`` (TensorBoard), ``model.keras`` (final), ``thresholds.json`` and
``calibration.json`` (after training), ``metrics.json``, plots. :func:`load_run` gives a :class:`LoadedRun` (config, labels, model,
text preprocessor) to evaluation, prediction and export.

Imports: config, data and models only; imported by tasks, training, evaluation and serving.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

import keras
import numpy as np
import pandas as pd

from tfmm.config import RunConfig, load_config
from tfmm.data.manifest import Manifest, load_labels
from tfmm.data.pipeline import make_dataset
from tfmm.files import write_json_atomic
from tfmm.models import text

logger = logging.getLogger(__name__)

# Written by training (train, resume, callbacks, thresholds):
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.keras"
TOKENIZER_DIR = "tokenizer"
SKIPPED_FILE = "skipped_rows.csv"
TRAINING_CURVES_FILE = "training_curves.png"
DATA_SOURCES_FILE = "data_sources.json"
HISTORY_FILE = "history.json"  # every epoch's logs, epochs before a resume included
HISTORY_CSV = "history.csv"
STATE_FILE = "train_state.json"
BEST_CHECKPOINT = os.path.join("checkpoints", "best.weights.h5")
LOGS_DIR = "logs"
THRESHOLDS_FILE = "thresholds.json"
CALIBRATION_FILE = "calibration.json"  # the temperature fitted after training
DEFAULT_CACHE_DIR = "feature_cache"
# Written by evaluate (the default report folder is the run directory):
METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_CURVE_FILE = "roc_curve.png"
PR_CURVE_FILE = "pr_curve.png"
ABLATION_FILE = "ablation.json"
RELIABILITY_FILE = "reliability.png"
EVAL_LOGS_DIR = os.path.join(LOGS_DIR, "eval")  # evaluate's TensorBoard images


def manifest_source(data) -> Optional[dict]:
    """Where a manifest argument came from: ``{"path": absolute path, "root": image folder}``.

    ``None`` for a DataFrame (or a :class:`~tfmm.data.manifest.Manifest` made from one): it has no path
    to read it again from.
    """
    if data is None or isinstance(data, pd.DataFrame):
        return None
    if isinstance(data, Manifest):
        if data.source.startswith("<"):  # "<DataFrame>"
            return None
        return {"path": _absolute(data.source), "root": data.root}
    return {"path": _absolute(os.fspath(data))}


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)  # gs://... stays as it is


def write_data_sources(run_dir: str, train_data, val_data) -> dict:
    """Writes ``data_sources.json`` (``train``/``validation``: see :func:`manifest_source`, or null)."""
    sources = {"train": manifest_source(train_data), "validation": manifest_source(val_data)}
    write_json_atomic(os.path.join(run_dir, DATA_SOURCES_FILE), sources)
    return sources


def read_data_sources(run_dir: str) -> dict:
    """The run's ``data_sources.json`` (``{}`` for runs trained before it was written, or unreadable)."""
    path = os.path.join(run_dir, DATA_SOURCES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            sources = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", path, e)
        return {}
    return sources if isinstance(sources, dict) else {}


def read_calibration(run_dir: str) -> Optional[dict]:
    """The run's ``calibration.json`` (``temperature``, ``activation``, ...), or ``None`` when the
    run has none (older runs, ``--no-calibrate``, no validation data, uncalibrated tasks).

    Raises:
        ValueError: the file is unreadable or holds no temperature > 0 (names the file).
    """
    path = os.path.join(run_dir, CALIBRATION_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            calibration = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); delete it to serve uncalibrated scores") from e
    temperature = calibration.get("temperature") if isinstance(calibration, dict) else None
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{path}: 'temperature' must be a number > 0; received {temperature!r}")
    return calibration


@dataclasses.dataclass
class LoadedRun:
    """A trained run loaded back from its directory.

    ``calibration`` is the run's ``calibration.json`` (``None``: scores are served as the
    model gives them); the run's task applies it (see :mod:`tfmm.evaluation.calibration`).
    """

    run_dir: str
    config: RunConfig
    labels: list
    model: keras.Model
    preprocessor: object
    calibration: Optional[dict] = None

    @property
    def temperature(self) -> float:
        """The fitted temperature (1.0 without ``calibration.json``)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    def dataset(self, manifest: Manifest, *, batch_size: Optional[int] = None):
        """The run's input pipeline over ``manifest``: features only, no shuffling."""
        return make_dataset(
            manifest, config=self.config.data, preprocessor=self.preprocessor,
            modalities=self.config.model.modalities,
            batch_size=batch_size or self.config.train.batch_size,
        )

    def predict_scores(self, manifest: Manifest) -> np.ndarray:
        """The model's outputs for every row of ``manifest``, in order (``[N, C]``; ``[N, 1]``
        for one score per row), before any temperature scaling."""
        return np.asarray(self.model.predict(self.dataset(manifest), verbose=0))


def load_run(run_dir: str) -> LoadedRun:
    """Loads config, labels, text preprocessor, ``model.keras`` and ``calibration.json`` (when
    present) from a run directory.

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished tfmm run (names the missing file).
    """
    for name in (CONFIG_FILE, LABELS_FILE, MODEL_FILE):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(
                f"{run_dir!r} is not a finished tfmm run: {name} is missing "
                "(train one with `tfmm train --output-dir DIR`)"
            )
    config = load_config(os.path.join(run_dir, CONFIG_FILE))
    labels = load_labels(os.path.join(run_dir, LABELS_FILE))
    import tfmm.models.build  # noqa: F401  (registers tfmm layers)
    safe_mode = True
    hub_text = config.model.uses_text and text.parse_text_spec(text.text_spec(config.model)).kind == "tfhub"
    if hub_text:
        import tfmm.models.hub  # noqa: F401  (registers HubTextEncoder)
        # HubTextEncoder reloads its SavedModel handles, which Keras safe mode refuses;
        # only the handles recorded by this run's own config.yaml are loaded.
        safe_mode = False
    if (config.model.uses_text and not hub_text) or (
            config.model.uses_image and config.model.image_encoder.startswith("keras_hub:")):
        import keras_hub  # noqa: F401  (registers the KerasHub text and image backbone classes)
    model = keras.models.load_model(os.path.join(run_dir, MODEL_FILE), compile=False, safe_mode=safe_mode)
    preprocessor = None
    if config.model.uses_text:
        saved = os.path.join(run_dir, TOKENIZER_DIR)
        preprocessor = text.load_text_preprocessor(
            text.text_spec(config.model), config.data.sequence_length,
            saved_tokenizer=saved if os.path.isdir(saved) else None,
        )
    return LoadedRun(os.path.abspath(run_dir), config, labels, model, preprocessor,
                     calibration=read_calibration(run_dir))
