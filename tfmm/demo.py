"""``tfmm demo``: the embedded default, end to end and offline.

Generates the demo dataset (see :mod:`tfmm.data.demo_data`), trains the fused model and the
image-only and text-only baselines with the same code, evaluates all three on the test
split and keeps the fused run. Both encoders are pretrained, frozen and read offline from
installed packages: all-MiniLM-L6-v2 for the captions, EfficientNet-Lite0 (ImageNet) for the
images. Their features are computed once and shared by the three runs (the feature cache in
``OUTPUT_DIR/feature_cache``), so each run trains only its head.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from tfmm.config import RunConfig
from tfmm.data.demo_data import write_demo_dataset
from tfmm.evaluation.evaluate import evaluate
from tfmm.serving.export import export_for_serving
from tfmm.training.train import train

logger = logging.getLogger(__name__)

RUNS = (("fused", "both"), ("image-only", "image"), ("text-only", "text"))


IMAGE_SIZE = 96  # the demo's PNGs are drawn at this size; Lite0 reads them without resizing


def demo_config(*, epochs: Optional[int] = None, seed: int = 0, cache_dir: str = "") -> RunConfig:
    """The demo's run config: preset ``fast`` (frozen pretrained encoders, EfficientNet-Lite0 and
    MiniLM, their features cached; only the head trains) on 96 px images and short captions; the
    head trains at the frozen-encoder defaults (learning rate and epochs:
    :func:`tfmm.training.optimizer.resolve_train_defaults`), stopped early on the validation loss.
    The options ``fast`` sets are also given here, so the demo stays the same whatever the default preset."""
    return RunConfig().replace(
        data={"image_size": IMAGE_SIZE, "sequence_length": 16},
        model={"text_encoder": "minilm", "image_encoder": "efficientnet_lite0", "image_weights": "imagenet",
               "freeze_image": True, "freeze_text": True, "projection_dim": 128, "hidden_dim": 128,
               "dropout": 0.1},
        train={"epochs": epochs, "batch_size": 32, "early_stopping_patience": 3, "seed": seed,
               "cache_features": True, "cache_dir": cache_dir, "preset": "fast"},
    )


def run_demo(output_dir: str = "tfmm_demo", *, epochs: Optional[int] = None, n_train: int = 1800, seed: int = 0,
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
        n_test=max(n_train // 4, 9), seed=seed, image_size=IMAGE_SIZE,
    )
    base = demo_config(epochs=epochs, seed=seed, cache_dir=os.path.join(output_dir, "feature_cache"))
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
