"""``tfmm demo``: the embedded default, end to end and offline.

Generates the demo dataset (see :mod:`tfmm.data.demo_data`), trains the fused model and the
image-only and text-only baselines with the same code, evaluates all three on the test
split and keeps the fused run. Text: the offline all-MiniLM-L6-v2 (frozen). Image: VGG16
at 32x32 from random weights (ImageNet weights cannot be downloaded offline).
"""

from __future__ import annotations

import json
import logging
import os

from tfmm.config import RunConfig
from tfmm.data.demo_data import write_demo_dataset
from tfmm.evaluation.evaluate import evaluate
from tfmm.serving.export import export_for_serving
from tfmm.training.train import train

logger = logging.getLogger(__name__)

RUNS = (("fused", "both"), ("image-only", "image"), ("text-only", "text"))


def demo_config(*, epochs: int = 5, seed: int = 0) -> RunConfig:
    """The demo's run config: small images, short captions, frozen MiniLM, VGG16 from scratch."""
    return RunConfig().replace(
        data={"image_size": 32, "sequence_length": 16},
        model={"text_encoder": "minilm", "image_encoder": "vgg16", "image_weights": "none",
               "freeze_text": True, "projection_dim": 128, "hidden_dim": 128, "dropout": 0.1},
        train={"epochs": epochs, "batch_size": 32, "learning_rate": 1e-4,
               "early_stopping_patience": 0, "seed": seed},
    )


def run_demo(output_dir: str = "tfmm_demo", *, epochs: int = 5, n_train: int = 1800, seed: int = 0,
             export_dir: str = "saved_models/demo") -> dict:
    """Runs the demo; returns ``{"metrics": {run: metrics}, "run_dirs": {run: dir}, "export_dir": version
    folder of the fused model's TF Serving export (under ``export_dir``, relative to the current folder),
    "notes": [lines to show]}``.

    Example:
        >>> results = run_demo("/tmp/tfmm_demo", epochs=1, n_train=180)
        >>> sorted(results["metrics"])
        ['fused', 'image-only', 'text-only']
    """
    output_dir = os.path.abspath(output_dir)
    paths = write_demo_dataset(
        os.path.join(output_dir, "data"), n_train=n_train, n_val=max(n_train // 6, 9),
        n_test=max(n_train // 4, 9), seed=seed,
    )
    base = demo_config(epochs=epochs, seed=seed)
    metrics, run_dirs = {}, {}
    for name, modalities in RUNS:
        logger.info("demo: training the %s model", name)
        run_dir = os.path.join(output_dir, name)
        result = train(base.replace(model={"modalities": modalities}), paths["train"], paths["val"], run_dir,
                       overwrite=True)  # the demo regenerates its data: always train afresh
        metrics[name] = evaluate(run_dir, paths["test"])
        run_dirs[name] = result.run_dir
    with open(os.path.join(output_dir, "demo_results.json"), "w", encoding="utf-8") as f:
        json.dump({"metrics": metrics, "run_dirs": run_dirs}, f, indent=2)
    results = {"metrics": metrics, "run_dirs": run_dirs, "notes": []}
    logger.info("demo: exporting the fused model for TF Serving")
    exported = export_for_serving(run_dirs["fused"], export_dir, warmup_data=paths["val"])
    results["export_dir"] = exported.path
    results["notes"].append(f"TF Serving export: {exported.path} (checked; serve it as in README, Serve with Docker)")
    return results
