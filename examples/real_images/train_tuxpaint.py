"""Train tfmm on real images with human-written descriptions: Tux Paint's stamps.

The data is Debian's ``tuxpaint-stamps-default`` package (GPL-2): about 600 photographs and
drawings, each with the one-line description its author wrote ("A dingo.", "Sweet yellow
corn.", "A European coin of 50 cents (0.50 €).") and its topic folder (animals, food, town,
vehicles, ... 12 topics) as the label. See ``tuxpaint_stamps.py`` for how rows are made.

Get the package with Debian's client. Installed (root):

    sudo apt-get update && sudo apt-get install tuxpaint-stamps-default

or, when it is not installed, the script fetches it itself without root, as
``apt-get download tuxpaint-stamps-default`` + ``dpkg-deb -x`` into ``OUTPUT_DIR/package/``
(``--stamps-dir`` points at any other copy of the stamps folder).

Then train with the offline pretrained encoders, both frozen (features are computed once and
cached; only the fusion head trains), and score the test split:

    python examples/real_images/train_tuxpaint.py                          # fused, Lite0 + MiniLM
    python examples/real_images/train_tuxpaint.py --modalities image       # image only, pretrained
    python examples/real_images/train_tuxpaint.py --modalities image --image-weights none  # random
    python examples/real_images/train_tuxpaint.py --modalities text        # text only

Any tfmm image encoder works (``--image-encoder mobilenetv2 --image-weights none`` needs no
weight package). ``benchmarks/frozen_linear_baseline.py`` compares this with logistic
regression on the same frozen features and split.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tuxpaint_stamps  # noqa: E402

DEFAULT_OUT = "runs/tuxpaint"
METRIC_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "n_examples")


def build_parser(description: str = __doc__, default_out: str = DEFAULT_OUT) -> argparse.ArgumentParser:
    """The example's flags (``benchmarks/frozen_linear_baseline.py`` adds its own to them)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--stamps-dir", help="the package's stamps folder (default: the installed "
                      f"{tuxpaint_stamps.INSTALLED_STAMPS}, else downloaded into OUT/package)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the stratified split")
    data.add_argument("--min-per-class", type=int, default=10, help="drop topics with fewer stamps")
    model = p.add_argument_group("model")
    model.add_argument("--image-encoder", default="efficientnet_lite0")
    model.add_argument("--image-weights", default="imagenet", help="imagenet, none or a local file")
    model.add_argument("--text-encoder", default="minilm")
    model.add_argument("--modalities", default="both", choices=("both", "image", "text"))
    model.add_argument("--image-size", type=int, default=224)
    model.add_argument("--sequence-length", type=int, default=32)
    model.add_argument("--dropout", type=float, default=0.5,
                       help="dropout after fusion (0.5 was best on the validation split of 0.2, 0.5; "
                            "363 training rows: a wide head overfits)")
    model.add_argument("--no-freeze", action="store_true",
                       help="train the encoders too (default: both frozen, features cached)")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=60)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--patience", type=int, default=8, help="early-stopping patience (epochs)")
    train.add_argument("--seed", type=int, default=42, help="seed of training")
    p.add_argument("--output-dir", default=default_out,
                   help="data/, package/, feature_cache/ and runs/NAME per setting go here")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def prepare(args: argparse.Namespace, folds: int = None, fold: int = 0) -> dict:
    """Finds (or downloads) the package and writes the manifests (of fold ``fold`` of ``folds``,
    given ``folds``: :func:`tuxpaint_stamps.fold_split`); returns their paths."""
    stamps = tuxpaint_stamps.find_or_fetch_stamps(args.stamps_dir, os.path.join(args.output_dir, "package"))
    return tuxpaint_stamps.prepare_dataset(
        stamps, os.path.join(args.output_dir, "data"), seed=args.split_seed,
        min_per_class=args.min_per_class, folds=folds, fold=fold,
    )


def make_config(args: argparse.Namespace, modalities: str = None, image_weights: str = None):
    """The run's :class:`tfmm.RunConfig`: frozen encoders (unless ``--no-freeze``), cached
    features shared by every run under ``OUTPUT_DIR/feature_cache``."""
    import tfmm

    frozen = not args.no_freeze
    return tfmm.RunConfig().replace(
        data={"image_size": args.image_size, "sequence_length": args.sequence_length},
        model={
            "text_encoder": args.text_encoder,
            "image_encoder": args.image_encoder,
            "image_weights": image_weights or args.image_weights,
            "modalities": modalities or args.modalities,
            "freeze_image": frozen,
            "freeze_text": frozen,
            "dropout": args.dropout,
        },
        train={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "early_stopping_patience": args.patience,
            "seed": args.seed,
            "cache_dir": os.path.abspath(os.path.join(args.output_dir, "feature_cache")),
        },
    )


def run_name(config) -> str:
    m = config.model
    image = f"{m.image_encoder}-{os.path.basename(str(m.image_weights))}"
    return {"both": f"fused_{image}_{m.text_encoder}", "image": f"image_{image}",
            "text": f"text_{m.text_encoder}"}[m.modalities]


def train_and_evaluate(config, paths: dict, output_dir: str, *, verbose=2) -> dict:
    """Trains on ``paths["train"]`` (early stopping on ``paths["val"]``), evaluates on
    ``paths["test"]``; returns the test metrics with ``run_dir`` added."""
    import tfmm

    run_dir = os.path.join(output_dir, "runs", run_name(config))
    tfmm.train(config, paths["train"], paths["val"], run_dir, overwrite=True, verbose=verbose)
    metrics = tfmm.evaluate(run_dir, paths["test"], report_dir=os.path.join(run_dir, "test_report"))
    return {**metrics, "run_dir": run_dir}


def configure_logging() -> None:
    """tfmm's INFO lines, as the ``tfmm`` command prints them, without TensorFlow's and absl's
    (collectives, the projector checkpoint's sharding callback)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv=None) -> dict:
    args = parse_args(argv)
    configure_logging()
    paths = prepare(args)
    with open(paths["source"], encoding="utf-8") as f:
        source = json.load(f)
    print(f"data: {source['package']} {source['package_version']}, rows {source['rows']}, "
          f"{len(source['classes'])} classes")
    config = make_config(args)
    metrics = train_and_evaluate(config, paths, args.output_dir)
    summary = {k: metrics[k] for k in METRIC_KEYS}
    print(f"{run_name(config)} test: " + ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    print(f"run: {metrics['run_dir']}")
    return metrics


if __name__ == "__main__":
    main()
