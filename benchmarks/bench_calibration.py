"""Temperature scaling: test-set calibration of one run, its model's scores vs the calibrated ones.

Data: scikit-learn's digits with an ink colour named only in the caption (20 labels, see
``bench_frozen_defaults.write_digits_dataset``), ``--label-noise`` of the rows of every split
given another label at random (seeded); frozen encoders (VGG16 with random weights, the
offline MiniLM), a head trained on their cached features for ``--epochs`` epochs without
early stopping: it learns the noisy training labels by heart and ends over-confident. After ``fit`` tfmm fits the temperature on the
validation split (``calibration.json``); ``tfmm.evaluate`` on the test split then reports both
sides of the same model: ``*_uncalibrated`` (the softmax as trained) and the calibrated scores
(what the run serves). Accuracy is the same on both sides (dividing logits by T keeps their order).

Printed: temperature, test NLL / ECE (15 bins, top label) / Brier before and after, accuracy,
and the ratio of each before / after. The temperature minimizes the validation NLL, so the
test NLL is the number it should improve; ECE and Brier are reported as they come (with
labels flipped to any other class at random, the NLL-optimal T can overshoot for the top label).

Run: ``python benchmarks/bench_calibration.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import pandas as pd

import common  # noqa: F401  (sets the environment and sys.path first)
from bench_frozen_defaults import base_config, write_digits_dataset
from common import print_header, print_ratio, print_table


def add_label_noise(paths: dict, fraction: float, seed: int = 0) -> None:
    """Gives ``fraction`` of the rows of each manifest another label, drawn at random (in place)."""
    rng = np.random.default_rng(seed)
    for path in paths.values():
        frame = pd.read_csv(path)
        labels = sorted(frame["label"].unique())
        for i in np.flatnonzero(rng.random(len(frame)) < fraction):
            frame.loc[i, "label"] = rng.choice([v for v in labels if v != frame.loc[i, "label"]])
        frame.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--label-noise", type=float, default=0.2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--work-dir", default=None, help="keep the data and the run here (default: a temp dir)")
    args = parser.parse_args()
    import tfmm

    work = args.work_dir or tempfile.mkdtemp(prefix="tfmm_calibration_")
    paths = write_digits_dataset(os.path.join(work, "digits"), image_size=args.image_size)
    add_label_noise(paths, args.label_noise)
    config = base_config(args.image_size).replace(
        model={"hidden_dim": 256, "dropout": 0.0},
        train={"epochs": args.epochs, "early_stopping_patience": 0, "learning_rate": 3e-3})
    run_dir = os.path.join(work, "run")
    tfmm.train(config, paths["train"], paths["val"], run_dir, verbose=0, overwrite=True)
    with open(os.path.join(run_dir, "calibration.json"), encoding="utf-8") as f:
        fitted = json.load(f)
    m = tfmm.evaluate(run_dir, paths["test"], report_dir=os.path.join(work, "report"))

    print_header(f"temperature scaling on digits x ink colour, {args.label_noise:.0%} labels noisy "
                 f"({m['n_examples']} test rows, "
                 f"T = {fitted['temperature']:.3f} fitted on {fitted['n_rows']} validation rows)")
    rows = [[name, f"{m[key + '_uncalibrated']:.4f}", f"{m[key]:.4f}"]
            for name, key in (("NLL", "nll"), ("ECE (15 bins)", "ece"), ("Brier", "brier"))]
    rows.append(["accuracy", f"{m['accuracy']:.4f}", f"{m['accuracy']:.4f}"])
    print_table(["test metric", "model (uncalibrated)", "calibrated"], rows)
    for name, key in (("NLL", "nll"), ("ECE", "ece"), ("Brier", "brier")):
        print_ratio(f"{name} uncalibrated / calibrated", m[key + "_uncalibrated"] / max(m[key], 1e-12),
                    "> 1: what T minimizes" if name == "NLL" else "reported")
    print(f"reliability diagram: {os.path.join(work, 'report', 'reliability.png')}")


if __name__ == "__main__":
    main()
