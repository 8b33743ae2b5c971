"""tfmm: image + text models for Keras 3 / TensorFlow.

Example:
    >>> import tfmm
    >>> config = tfmm.RunConfig().replace(model={"image_weights": "none"})
    >>> result = tfmm.train(config, "data/train.csv", "data/val.csv", "runs/first")
    >>> metrics = tfmm.evaluate("runs/first", "data/test.csv")
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfmm.config import (  # noqa: E402
    DataConfig, ModelConfig, RunConfig, TrainConfig, load_config, save_config,
)
from tfmm.data.manifest import Manifest, read_manifest, write_manifest  # noqa: E402
from tfmm.data.pipeline import make_dataset  # noqa: E402
from tfmm.data.validation import ManifestError  # noqa: E402
from tfmm.evaluation.evaluate import evaluate, predict  # noqa: E402
from tfmm.tasks import build_model  # noqa: E402
from tfmm.run_dir import load_run  # noqa: E402
from tfmm.serving.export import export_for_serving  # noqa: E402
from tfmm.training.train import train  # noqa: E402
from tfmm.tuning import tune  # noqa: E402  (KerasTuner is imported only when a search runs)
from tfmm.training.tracing_log import quiet_new_model_retracing as _quiet_new_model_retracing  # noqa: E402

# Each stage, seed, ensemble member or tuning trial is a new Keras model; TensorFlow would warn
# that their step functions "retraced" (tfmm.training.tracing_log).
_quiet_new_model_retracing()

__version__ = "0.1.0"

__all__ = [
    "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config", "save_config",
    "Manifest", "ManifestError", "make_dataset", "read_manifest", "write_manifest", "load_manifest",
    "build_model", "train", "evaluate", "load_run", "predict", "export_for_serving",
    "tune",
]

load_manifest = read_manifest
