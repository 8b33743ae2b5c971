"""Frozen encoders, default flags: tfmm's recipe vs a plain Keras script, accuracy and time.

Two data sets, both with the label needing the image and the caption:

- **demo**: ``tfmm.data.demo_data`` (9 labels: shape from the image, colour from the caption);
- **digits**: scikit-learn's ``load_digits`` (1797 real handwritten 8x8 digits, upscaled,
  gray), each row given an ink colour named only in its caption: 20 labels = digit x colour.
  Split 80/20 into train / test as in the issue; 20% of train is the validation split.

Both sides use the same frozen encoders (VGG16 with random weights, as ``--image-weights none``,
and the offline MiniLM; the plain script uses the very encoder objects tfmm built):

- **tfmm**: ``tfmm.train`` with ``--freeze-image --freeze-text`` and no other training flag:
  the features are cached once, a head trains on them at the default head learning rate,
  for the default epochs, stopped by validation; test accuracy from ``tfmm.evaluate``.
- **plain**: ``keras.Model`` = frozen encoders -> concatenate -> Dense(256, relu) -> softmax,
  ``compile(optimizer="adam")`` (default rate), ``fit`` for ``--plain-epochs`` on the raw
  ``tf.data`` pipeline (the encoders run every step, no cache).

Printed per data set: test accuracy, wall time and the marginal epoch (median epoch time after
the first) of each side. Goals: tfmm's accuracy >= plain's, its marginal epoch >= 10x cheaper.

``--learning-rates 3e-4,3e-3`` adds tfmm runs at other rates (the evidence for the default).

Run: ``python benchmarks/bench_frozen_defaults.py`` (about 10-15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
import time

import common  # noqa: F401  (sets the environment and sys.path first)
import keras
import numpy as np
from common import EpochTimer, print_header, print_ratio, print_table, timed

COLOURS = ("red", "blue")
INK_TEMPLATES = ("written in {c} ink", "the ink is {c}", "a digit drawn in {c}", "{c} pen")


def write_digits_dataset(folder: str, *, image_size: int = 32, seed: int = 0) -> dict:
    """scikit-learn's digits as gray PNGs with ink-colour captions; ``{"train", "val", "test"}``
    manifest paths (label ``"<digit> <colour>"``, the colour only in the caption)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for i, (pixels, digit) in enumerate(zip(digits.images, digits.target)):
        ink = (255 - pixels * 255 / 16).astype(np.uint8)  # dark ink on white
        rel = f"images/{i:04d}.png"
        Image.fromarray(ink, "L").resize((image_size, image_size), Image.BILINEAR).convert("RGB").save(
            os.path.join(folder, rel))
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        caption = INK_TEMPLATES[int(rng.integers(len(INK_TEMPLATES)))].format(c=colour)
        rows.append((rel, caption, f"{digit} {colour}"))
    labels = [r[2] for r in rows]
    train_val, test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=labels)
    train, val = train_test_split(train_val, test_size=0.2, random_state=seed,
                                  stratify=[r[2] for r in train_val])
    paths = {}
    for split, split_rows in (("train", train), ("val", val), ("test", test)):
        paths[split] = os.path.join(folder, f"{split}.csv")
        with open(paths[split], "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "text", "label"])
            writer.writerows(split_rows)
    return paths


def base_config(image_size: int):
    """Frozen VGG16 (random weights) + frozen MiniLM; every training option at its default."""
    from tfmm.config import RunConfig

    return RunConfig().replace(
        data={"image_size": image_size, "sequence_length": 16},
        model={"image_encoder": "vgg16", "image_weights": "none", "text_encoder": "minilm",
               "freeze_image": True, "freeze_text": True},
    )


def run_tfmm(paths: dict, work: str, image_size: int, learning_rate=None) -> dict:
    """``tfmm.train`` with default flags (or only ``learning_rate`` set), features cached in
    ``work/feature_cache`` (shared by the runs of one data set)."""
    import tfmm

    timer = EpochTimer()
    run_dir = os.path.join(work, f"tfmm_run_{learning_rate or 'default'}")
    config = base_config(image_size).replace(train={"learning_rate": learning_rate,
                                                    "cache_dir": os.path.join(work, "feature_cache")})
    seconds, result = timed(tfmm.train, config, paths["train"], paths["val"], run_dir,
                            callbacks=[timer], verbose=0)
    metrics = tfmm.evaluate(run_dir, paths["test"])
    return {"accuracy": metrics["accuracy"], "wall_s": seconds, "epochs": len(timer.times),
            "epoch_s": timer.times, "result": result,
            "settings": f"lr {result.config.train.learning_rate:g}, {len(timer.times)} of "
                        f"{result.config.train.epochs} epochs"}


def run_plain(paths: dict, tfmm_result, epochs: int) -> dict:
    """The plain script: the same frozen encoder objects, a Keras head, ``adam``, no cache."""
    from tfmm.data.manifest import read_manifest
    from tfmm.data.pipeline import make_dataset
    from tfmm.models.text import TEXT_INPUTS, load_text_preprocessor, text_inputs

    config, labels = tfmm_result.config, tfmm_result.labels
    start = time.perf_counter()
    image_encoder = tfmm_result.model.get_layer("image_encoder")
    text_encoder = tfmm_result.model.get_layer("text_encoder")
    pre = load_text_preprocessor(config.model.text_encoder, config.data.sequence_length)
    ds = {split: make_dataset(read_manifest(paths[split], config.data), config=config.data, preprocessor=pre,
                              labels=labels, batch_size=32, shuffle=split == "train", seed=0)
          for split in ("train", "val", "test")}
    s = config.data.image_size
    inputs = {"image": keras.Input((s, s, 3), name="image"), **text_inputs(config.data.sequence_length)}
    image = image_encoder(inputs["image"], training=False)
    text = text_encoder({k: inputs[k] for k in TEXT_INPUTS}, training=False)
    hidden = keras.layers.Dense(256, activation="relu")(keras.layers.Concatenate()([image, text]))
    model = keras.Model(inputs, keras.layers.Dense(len(labels), activation="softmax")(hidden))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(ds["train"], validation_data=ds["val"], epochs=epochs, callbacks=[timer], verbose=0,
              shuffle=False)
    accuracy = float(model.evaluate(ds["test"], verbose=0, return_dict=True)["accuracy"])
    return {"accuracy": accuracy, "wall_s": time.perf_counter() - start, "epochs": epochs,
            "epoch_s": timer.times, "settings": f"adam 1e-3, {epochs} epochs"}


def marginal(epoch_s) -> float:
    return statistics.median(epoch_s[1:] or epoch_s)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--plain-epochs", type=int, default=4, help="the plain script's epochs (default: 4)")
    parser.add_argument("--demo-rows", type=int, default=900, help="demo training rows (default: 900)")
    parser.add_argument("--only", choices=("demo", "digits"), help="one data set only")
    parser.add_argument("--learning-rates", default="",
                        help="also train tfmm at these rates, comma-separated (e.g. 3e-4,3e-3), to "
                             "compare with the default")
    args = parser.parse_args(argv)
    print_header("bench_frozen_defaults: frozen encoders, tfmm defaults vs a plain Keras script")
    from tfmm.data.demo_data import write_demo_dataset

    work = tempfile.mkdtemp(prefix="tfmm_bench_frozen_")
    datasets = {
        "demo": lambda d: write_demo_dataset(d, n_train=args.demo_rows, n_val=args.demo_rows // 6,
                                             n_test=args.demo_rows // 3, image_size=args.image_size),
        "digits": lambda d: write_digits_dataset(d, image_size=args.image_size),
    }
    rows, ratios = [], []
    for name, write in datasets.items():
        if args.only and name != args.only:
            continue
        folder = os.path.join(work, name)
        paths = write(os.path.join(folder, "data"))
        n = {split: sum(1 for _ in open(path)) - 1 for split, path in paths.items()}
        ours = run_tfmm(paths, folder, args.image_size)
        plain = run_plain(paths, ours["result"], args.plain_epochs)
        for side, r in (("tfmm defaults", ours), ("plain keras", plain)):
            rows.append([f"{name} ({n['train']}/{n['val']}/{n['test']})", side, r["settings"], r["accuracy"],
                         r["wall_s"], r["epoch_s"][0], marginal(r["epoch_s"])])
        ratios.append((name, ours["accuracy"] - plain["accuracy"], marginal(plain["epoch_s"]) / marginal(ours["epoch_s"])))
        for lr in [float(v) for v in args.learning_rates.split(",") if v]:
            other = run_tfmm(paths, folder, args.image_size, learning_rate=lr)
            rows.append([f"{name} ({n['train']}/{n['val']}/{n['test']})", "tfmm, --learning-rate", other["settings"],
                         other["accuracy"], other["wall_s"], other["epoch_s"][0], marginal(other["epoch_s"])])
        print(f"{name}: tfmm {ours['accuracy']:.3f} vs plain {plain['accuracy']:.3f}", flush=True)
    print(f"\nVGG16 (random weights, frozen) at {args.image_size} px + MiniLM (frozen, 16 tokens); "
          "rows train/val/test; marginal epoch: median of epochs 2..N")
    print_table(["data set", "recipe", "settings", "test accuracy", "wall s", "epoch 1 s", "marginal epoch s"], rows)
    print()
    for name, gain, speed in ratios:
        print_ratio(f"{name}_accuracy_tfmm_minus_plain", gain, ">= 0")
        print_ratio(f"{name}_marginal_epoch_plain_vs_tfmm", speed, ">= 10")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
