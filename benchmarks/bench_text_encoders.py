"""The light ``embedding-bag`` text encoder vs MiniLM: epoch time and accuracy, text only.

Both train on the same demo data (``tfmm.data.demo_data``, captions that name the class in
varied phrasings), text branch only (``modalities="text"``), same head, seed and batch:

- ``embedding-bag``: hashed words + character trigrams, embedded and averaged, trained
  from scratch (learning rate 1e-2);
- ``minilm frozen``: the offline all-MiniLM-L6-v2, frozen, features cached (tfmm's default
  for a frozen encoder: the first epoch extracts the features, later epochs are cached);
- ``minilm fine-tuned``: MiniLM trained end to end (learning rate 1e-4).

Reported per run: the mean epoch time after the first (epoch 1 includes tracing and, for
the frozen run, feature extraction), epoch 1's time, and test accuracy after the last epoch.
Goal: embedding-bag's epochs >= 10x faster than fine-tuning MiniLM, accuracy within 0.1 of it.

Run: ``python benchmarks/bench_text_encoders.py`` (about 5-10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile

import common  # noqa: F401  (sets the environment and sys.path first)
from common import EpochTimer, print_header, print_ratio, print_table


def run_one(name: str, data: dict, root: str, epochs: int, **model) -> list:
    from tfmm.config import RunConfig
    from tfmm.evaluation.evaluate import evaluate
    from tfmm.run_dir import load_run
    from tfmm.training.train import train

    lr = model.pop("learning_rate")
    config = RunConfig().replace(
        data={"sequence_length": 32},
        model={"modalities": "text", "projection_dim": 64, "hidden_dim": 0, **model},
        train={"epochs": epochs, "batch_size": 32, "learning_rate": lr, "seed": 0},
    )
    clock = EpochTimer()
    out = f"{root}/{name.replace(' ', '_')}"
    train(config, data["train"], data["val"], out, callbacks=[clock], verbose=0)
    accuracy = evaluate(load_run(out), data["test"])["accuracy"]
    later = clock.times[1:] or clock.times
    return [name, epochs, clock.times[0], statistics.mean(later), accuracy]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    from tfmm.data.demo_data import write_demo_dataset

    print_header(f"text encoders, text only, {args.n_train} training rows, {args.epochs} epochs")
    root = tempfile.mkdtemp(prefix="bench_text_")
    try:
        data = write_demo_dataset(f"{root}/data", n_train=args.n_train, n_val=150, n_test=300)
        rows = [
            run_one("embedding-bag", data, root, args.epochs, text_encoder="embedding-bag", learning_rate=1e-2),
            run_one("minilm frozen", data, root, args.epochs, text_encoder="minilm", freeze_text=True,
                    learning_rate=1e-3),
            run_one("minilm fine-tuned", data, root, 2, text_encoder="minilm", learning_rate=1e-4),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(["run", "epochs", "epoch 1 s", "later epochs s", "test accuracy"], rows)
    print_ratio("minilm fine-tuned epoch / embedding-bag epoch", rows[2][3] / rows[0][3], ">= 10")
    print_ratio("embedding-bag accuracy - minilm fine-tuned accuracy", rows[0][4] - rows[2][4], ">= -0.1")


if __name__ == "__main__":
    main()
