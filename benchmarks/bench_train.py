"""Training overheads: ``fit`` vs a bare step, and the feature cache vs recomputing.

1. ``model.fit`` step throughput vs a bare ``tf.function`` step (``model(x,
   training=True)``, loss, gradients, ``optimizer.apply``) on the same in-memory batch,
   for the default model (VGG16 at 224 + MiniLM, both trainable). Goal: fit's overhead
   per step (iterator, metrics, callbacks) <= 10%. Fit steps are timed inside one ``fit``
   call after its first step: each ``fit`` call also builds an iterator and traces its
   train function once (seconds for this model), which a training run pays once.
2. Epoch time of ``tfmm.train`` with both encoders frozen, with the feature cache (the
   default) vs ``--no-cache-features`` (both encoders recomputed every epoch), same seed,
   and their validation metrics. Goal: >= 20x faster epochs, same metrics within noise.
   (Frozen encoders run in inference mode, so without head dropout the two runs give the
   same metrics; tests/training/test_frozen_inference.py checks it.)

3. Head-only training on cached features (both encoders frozen, default flags): the
   per-step cost inside ``tfmm.train`` (steps 2..N of each epoch: trainer model, metrics,
   callbacks, the cached ``tf.data`` pipeline) and the marginal epoch per step (whole epoch
   with validation and every callback, divided by its steps) vs a bare ``train_on_batch`` of
   the same head (``adam``, loss + accuracy) on in-memory arrays of the same shapes
   (``[32, 512 + 384]``: VGG16 + MiniLM features). Goal: <= 2x.

Run: ``python benchmarks/bench_train.py`` (about 4-8 minutes on 2 CPU cores; ``--only 3`` for
part 3 alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import common  # noqa: F401  (sets the environment and sys.path first)
import keras
from common import (EpochTimer, alternate, best, default_config, fit_step_seconds, print_header, print_ratio, print_table,
                    timed)


def fit_vs_bare(steps: int, rounds: int, batch_size: int) -> tuple:
    import numpy as np
    import tensorflow as tf

    from tfmm.tasks import build_model, get_task
    from tfmm.training.train import compile_model, make_optimizer

    config = default_config().replace(model={"num_classes": 9})
    keras.utils.set_random_seed(0)
    model = build_model(config)
    compile_model(model, config, steps_per_epoch=100)
    s, L = config.data.image_size, config.data.sequence_length
    rng = np.random.default_rng(0)
    x = {"image": tf.constant(rng.uniform(0, 255, (batch_size, s, s, 3)), tf.float32),
         "token_ids": tf.constant(rng.integers(1000, 2000, (batch_size, L)), tf.int32),
         "segment_ids": tf.zeros((batch_size, L), tf.int32),
         "padding_mask": tf.ones((batch_size, L), tf.int32)}
    y = tf.one_hot(rng.integers(0, 9, batch_size), 9)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()

    loss_fn = get_task(config.model.task).loss(config)
    optimizer = make_optimizer(config, 100)
    optimizer.build(model.trainable_variables)

    @tf.function
    def bare_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    def bare():
        for _ in range(steps):
            bare_step(x, y)

    fit_seconds = []

    def fit():  # steps 2..N of one fit call (fit's set-up is paid once per training run)
        fit_seconds.append(fit_step_seconds(model, ds, steps))

    bare_step(x, y)  # trace
    times = alternate(rounds, bare_step=bare, fit=fit)
    times["fit"] = fit_seconds
    return {k: steps * batch_size / best(v) for k, v in times.items()}, times


def cache_vs_recompute(work: str, n_train: int, n_val: int, epochs: int) -> dict:
    from tfmm.data.demo_data import write_demo_dataset
    from tfmm.training.train import train

    paths = write_demo_dataset(os.path.join(work, "data"), n_train=n_train, n_val=n_val, n_test=9,
                               image_size=224)
    config = default_config(freeze_image=True, freeze_text=True).replace(
        train={"epochs": epochs, "batch_size": 8, "learning_rate": 1e-3, "early_stopping_patience": 0,
               "seed": 0})
    out = {}
    for name, flag in (("cached", None), ("recomputed", False)):
        timer = EpochTimer()
        seconds, result = timed(train, config.replace(train={"cache_features": flag}), paths["train"],
                                paths["val"], os.path.join(work, name), callbacks=[timer], verbose=0)
        out[name] = {"total_s": seconds, "epoch_s": timer.times, "history": result.history}
    return out


class StepClock(keras.callbacks.Callback):
    """Per epoch: the seconds between consecutive training steps (2..N) and the whole epoch."""

    def __init__(self):
        super().__init__()
        self.steps, self.epochs = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._begin, self._ends = time.perf_counter(), []

    def on_train_batch_end(self, batch, logs=None):
        self._ends.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        ends = self._ends
        self.steps.append([b - a for a, b in zip(ends, ends[1:])])
        self.epochs.append((time.perf_counter() - self._begin, len(ends)))


def bare_head_step_seconds(head, batch_size: int, steps: int, num_classes: int) -> float:
    """Median seconds of ``train_on_batch`` of a clone of ``head`` on in-memory batches."""
    import numpy as np

    bare = keras.models.clone_model(head)
    bare.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    n = batch_size * 8
    x = {i.name: rng.normal(size=(n, i.shape[-1])).astype("float32") for i in bare.inputs}
    y = np.eye(num_classes, dtype="float32")[rng.integers(0, num_classes, n)]
    times = []
    for step in range(steps + 3):
        k = slice((step % 8) * batch_size, (step % 8 + 1) * batch_size)
        start = time.perf_counter()
        bare.train_on_batch({name: v[k] for name, v in x.items()}, y[k])
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])  # the first calls trace the train function


def cached_head_vs_bare(work: str, n_train: int, n_val: int, epochs: int) -> dict:
    from tfmm.data.demo_data import write_demo_dataset
    from tfmm.training.train import train

    paths = write_demo_dataset(os.path.join(work, "head_data"), n_train=n_train, n_val=n_val, n_test=9,
                               image_size=32)
    # The shapes: VGG16 (512) + MiniLM (384) features, batch 32; small images keep the
    # one-time extraction short (the head's step does not depend on them).
    config = default_config(freeze_image=True, freeze_text=True).replace(
        data={"image_size": 32, "sequence_length": 16}, train={"epochs": epochs, "seed": 0})
    clock = StepClock()
    bare_before = bare_head_step_seconds(_demo_head(config), 32, 40, 9)
    seconds, result = timed(train, config, paths["train"], paths["val"], os.path.join(work, "head_run"),
                            callbacks=[clock], verbose=0)
    head = result.model.get_layer("fusion_head")
    bare_after = bare_head_step_seconds(head, 32, 40, len(result.labels))
    later = range(1, len(clock.steps)) if len(clock.steps) > 1 else range(len(clock.steps))
    step = statistics.median([t for e in later for t in clock.steps[e]])
    epoch = statistics.median([clock.epochs[e][0] / clock.epochs[e][1] for e in later])
    return {"total_s": seconds, "fit_step_s": step, "epoch_per_step_s": epoch,
            "bare_step_s": min(bare_before, bare_after), "bare_rounds": (bare_before, bare_after),
            "epochs": len(clock.epochs), "steps": clock.epochs[0][1], "history": result.history,
            "learning_rate": result.config.train.learning_rate}


def _demo_head(config):
    """A fusion head of ``config``'s shapes (for the bare side's first round)."""
    from tfmm.tasks import get_task

    return get_task("classification").build_head(config.replace(model={"num_classes": 9}),
                                                 {"image_features": 512, "text_features": 384})


def report_cached_head(args, work: str) -> None:
    """Part 3: runs :func:`cached_head_vs_bare` and prints its table and ratios."""
    head = cached_head_vs_bare(work, args.head_rows, args.head_rows // 4, args.head_epochs)
    print(f"\n3. head-only training on cached VGG16 + MiniLM features ([32, 896]), default flags "
          f"(learning rate {head['learning_rate']:g}), {args.head_rows} train rows, {head['steps']} steps "
          f"x {head['epochs']} epochs (median of epochs 2..{head['epochs']}); bare: median of 40 calls, "
          "best of a round before and one after the run")
    print_table(["step", "ms per step"], [
        ["tfmm.train, inside fit (steps 2..N)", 1000 * head["fit_step_s"]],
        ["tfmm.train, whole epoch / steps", 1000 * head["epoch_per_step_s"]],
        ["bare head.train_on_batch (in-memory)", 1000 * head["bare_step_s"]],
    ])
    print(f"bare rounds (ms): {' '.join(f'{1000 * t:.2f}' for t in head['bare_rounds'])}; "
          f"run total {head['total_s']:.1f} s, final val_accuracy {head['history']['val_accuracy'][-1]:.3f}")
    print_ratio("cached_head_step_vs_bare_train_on_batch", head["fit_step_s"] / head["bare_step_s"], "<= 2")
    print_ratio("cached_head_epoch_per_step_vs_bare", head["epoch_per_step_s"] / head["bare_step_s"],
                "(reported: adds validation and the per-epoch callbacks)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per round (default: 1)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default: 6)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: 8)")
    parser.add_argument("--train-rows", type=int, default=54, help="rows for part 2 (default: 54)")
    parser.add_argument("--val-rows", type=int, default=18, help="validation rows for part 2 (default: 18)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for part 2 (default: 3)")
    parser.add_argument("--head-rows", type=int, default=720, help="training rows for part 3 (default: 720)")
    parser.add_argument("--head-epochs", type=int, default=5, help="epochs for part 3 (default: 5)")
    parser.add_argument("--only", type=int, choices=(3,), help="run part 3 only")
    args = parser.parse_args(argv)
    print_header("bench_train: fit overhead, feature cache vs recomputing frozen encoders, cached head step")
    work = tempfile.mkdtemp(prefix="tfmm_bench_train_")
    report_cached_head(args, work)  # part 3 first: it is the quickest
    if args.only == 3:
        shutil.rmtree(work, ignore_errors=True)
        return

    rates, times = fit_vs_bare(args.steps, args.rounds, args.batch_size)
    print(f"\n1. default model (VGG16 224 + MiniLM 64 tokens, trainable), batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} alternating rounds (best round)")
    print_table(["step", "images/s", "seconds per round"],
                [[k, rates[k], " ".join(f"{t:.2f}" for t in times[k])] for k in ("bare_step", "fit")])
    overhead = rates["bare_step"] / rates["fit"] - 1.0

    runs = cache_vs_recompute(work, args.train_rows, args.val_rows, args.epochs)
    print(f"\n2. tfmm.train, VGG16 224 + MiniLM both frozen, {args.train_rows} train + {args.val_rows} val rows, "
          f"{args.epochs} epochs, batch 8, seed 0 (epoch time: median of epochs 2..{args.epochs})")
    rows = []
    for name, run in runs.items():
        later = run["epoch_s"][1:] or run["epoch_s"]
        h = run["history"]
        rows.append([name, run["total_s"], run["epoch_s"][0], statistics.median(later),
                     h["val_loss"][-1], h["val_accuracy"][-1], h["val_f1"][-1]])
    print_table(["run", "total s", "epoch 1 s", "epoch s", "val_loss", "val_accuracy", "val_f1"], rows)
    print()
    print_ratio("fit_overhead_vs_bare_step", overhead, "<= 0.10")
    print_ratio("epoch_speedup_with_feature_cache", rows[1][3] / rows[0][3], ">= 20")
    print_ratio("val_loss_cached_vs_recomputed", rows[0][4] / rows[1][4], "~1 (same metrics within noise)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
