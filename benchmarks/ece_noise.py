"""How large ECE is for a perfectly calibrated model on a small test set.

Draws ``--trials`` test sets of ``--rows`` rows whose top-label confidences look like a good
classifier's (70% in [0.9, 1], 30% in [0.4, 0.9]) and whose top label is right with exactly that
probability, and prints tfmm's ECE (15 bins) over them: the floor a measured ECE on that many rows
cannot be told apart from.

    python benchmarks/ece_noise.py                # 121 rows: the real-image example's test split
    python benchmarks/ece_noise.py --rows 1210
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (this checkout's tfmm on the path)
import numpy as np

from tfmm.evaluation.calibration import expected_calibration_error


def main(argv=None) -> np.ndarray:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=121)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    eces = []
    for _ in range(args.trials):
        n = args.rows
        confidence = np.where(rng.random(n) < 0.7, rng.uniform(0.9, 1.0, n), rng.uniform(0.4, 0.9, n))
        wrong = (rng.random(n) >= confidence).astype(int)  # class 0, the top label, with probability confidence
        eces.append(expected_calibration_error(np.stack([confidence, 1 - confidence], axis=1), wrong))
    eces = np.array(eces)
    print(f"perfectly calibrated, {args.rows} rows, {args.trials} trials: ECE mean {eces.mean():.4f}, "
          f"median {np.median(eces):.4f}, 90th percentile {np.quantile(eces, 0.9):.4f}, "
          f"P(ECE > 0.05) = {(eces > 0.05).mean():.2f}")
    return eces


if __name__ == "__main__":
    main()
