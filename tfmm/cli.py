"""The ``tfmm`` command: train, evaluate, predict and demo.

This is the only module that configures logging handlers and prints results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

logger = logging.getLogger("tfmm")

# (flag, config section, field, argparse kwargs). Defaults come from the config
# dataclasses, so argparse defaults are None: only flags given override a --config file.
_CONFIG_FLAGS = [
    ("--task", "model", "task", dict(choices=["classification", "binary", "multilabel"],
                                     help="what the head predicts (default: classification)")),
    ("--text-encoder", "model", "text_encoder", dict(
        metavar="SPEC", help="minilm (offline all-MiniLM-L6-v2, default), keras_nlp:PRESET_OR_DIR, "
                             "or tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE")),
    ("--text-pooling", "model", "text_pooling", dict(choices=["cls", "mean"],
                                                     help="pool text tokens by [CLS] or mean (default: mean)")),
    ("--image-encoder", "model", "image_encoder", dict(
        metavar="NAME", help="keras.applications model: vgg16 (default), resnet50, efficientnetb0, "
                             "mobilenetv2, ...")),
    ("--image-weights", "model", "image_weights", dict(
        metavar="imagenet|none|PATH", help="image encoder weights (default: imagenet; offline: a local "
                                           ".h5 file or none)")),
    ("--fusion", "model", "fusion", dict(choices=["concat", "sum", "mean", "gated"],
                                         help="how branches are combined (default: concat)")),
    ("--modalities", "model", "modalities", dict(choices=["both", "image", "text"],
                                                 help="train on both inputs or one (baselines; default: both)")),
    ("--projection-dim", "model", "projection_dim", dict(type=int, metavar="N",
                                                         help="width each branch is projected to (default: 256)")),
    ("--hidden-dim", "model", "hidden_dim", dict(type=int, metavar="N",
                                                 help="head hidden layer width, 0 for none (default: 256)")),
    ("--dropout", "model", "dropout", dict(type=float, metavar="X", help="dropout after fusion (default: 0.2)")),
    ("--freeze-image", "model", "freeze_image", dict(action="store_true", default=None,
                                                     help="keep the image encoder's weights fixed")),
    ("--freeze-text", "model", "freeze_text", dict(action="store_true", default=None,
                                                   help="keep the text encoder's weights fixed")),
    ("--image-size", "data", "image_size", dict(type=int, metavar="N",
                                                help="images are resized to NxN (default: 224)")),
    ("--sequence-length", "data", "sequence_length", dict(type=int, metavar="N",
                                                          help="text tokens per example (default: 64)")),
    ("--image-col", "data", "image_col", dict(metavar="NAME", help="manifest image column (default: image)")),
    ("--text-col", "data", "text_col", dict(metavar="NAME", help="manifest text column (default: text)")),
    ("--label-col", "data", "label_col", dict(metavar="NAME", help="manifest label column (default: label)")),
    ("--skip-bad-rows", "data", "skip_bad_rows", dict(
        action="store_true", default=None,
        help="skip invalid rows (written to RUN/skipped_rows.csv) instead of stopping")),
    ("--epochs", "train", "epochs", dict(type=int, metavar="N", help="passes over the data (default: 10)")),
    ("--batch-size", "train", "batch_size", dict(type=int, metavar="N",
                                                 help="examples per device per step (default: 32)")),
    ("--learning-rate", "train", "learning_rate", dict(type=float, metavar="X",
                                                       help="peak AdamW learning rate (default: 1e-4)")),
    ("--weight-decay", "train", "weight_decay", dict(type=float, metavar="X", help="AdamW weight decay (default: 1e-4)")),
    ("--warmup-fraction", "train", "warmup_fraction", dict(
        type=float, metavar="X", help="share of steps warming the learning rate up (default: 0.1)")),
    ("--early-stopping-patience", "train", "early_stopping_patience", dict(
        type=int, metavar="N", help="stop after N epochs without val_loss improvement, 0: off (default: 3)")),
    ("--strategy", "train", "strategy", dict(choices=["auto", "one_device", "mirrored", "multi_worker"],
                                             help="tf.distribute strategy (default: auto)")),
    ("--seed", "train", "seed", dict(type=int, metavar="N", help="random seed (default: 42)")),
]

# Performance options (tfmm.cache, tfmm.precision, the tf.data pipeline): see docs_perf.md.
_CONFIG_FLAGS += [
    ("--cache-features", "train", "cache_features", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="compute frozen encoders' features once (cached, keyed by encoder, weights, "
             "preprocessing and data) and train the rest on them (default: on when an "
             "encoder is frozen)")),
    ("--cache-dir", "train", "cache_dir", dict(metavar="DIR",
                                               help="feature cache folder, shared by runs (default: RUN/feature_cache)")),
    ("--mixed-precision", "train", "mixed_precision", dict(
        choices=["none", "mixed_float16", "mixed_bfloat16"],
        help="16-bit compute with float32 weights and outputs (default: none)")),
    ("--jit-compile", "train", "jit_compile", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="compile train steps with XLA (default: Keras auto, off on CPU only)")),
    ("--cache-in-memory", "data", "cache_in_memory", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="keep decoded images in memory after the first epoch (default: when they fit in 1 GiB)")),
    ("--deterministic", "data", "deterministic", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="--no-deterministic lets parallel decoding reorder elements: faster, not "
             "reproducible (default: deterministic)")),
    ("--tf-data-autotune", "data", "tf_data_autotune", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="run tf.data's background autotuner (default: off; in TF 2.21 it can stall "
             "every epoch's end, see docs_perf.md)")),
]

_TRAIN_EXAMPLES = """\
examples:
  tfmm train --data data/train.csv --val-data data/val.csv --output-dir runs/products
  tfmm train --data train.jsonl --output-dir runs/r1 --image-encoder resnet50 \\
      --image-weights ~/weights/resnet50_notop.h5 --freeze-image --epochs 5
  tfmm train --config cfg.yaml --data train.csv --output-dir runs/r2 --modalities image
"""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=36)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfmm",
        description="Image + text models for Keras 3 / TensorFlow: train, evaluate, predict, demo.",
        epilog="Run `tfmm COMMAND --help` for each command's options and examples.",
        formatter_class=_formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a fused model on a manifest", formatter_class=_formatter,
                       description="Train an image+text model with model.fit and write a run directory "
                                   "(config.yaml, labels.txt, model.keras, checkpoints/, logs/).",
                       epilog=_TRAIN_EXAMPLES)
    p.add_argument("--data", required=True, metavar="MANIFEST",
                   help="training manifest: .csv, .tsv or .jsonl with image, text, label columns")
    p.add_argument("--val-data", metavar="MANIFEST", help="validation manifest (same format)")
    p.add_argument("--output-dir", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON config; flags given here override it")
    for flag, _, _, kwargs in _CONFIG_FLAGS:
        p.add_argument(flag, **kwargs)

    p = sub.add_parser("evaluate", help="score a labeled manifest, write metrics.json",
                       formatter_class=_formatter,
                       description="Evaluate a trained run on a labeled manifest: accuracy, macro "
                                   "precision/recall/F1, per-class numbers and the confusion matrix.",
                       epilog="example:\n  tfmm evaluate --model runs/products --data data/test.csv")
    p.add_argument("--model", required=True, metavar="RUN", help="a run directory from `tfmm train`")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="labeled manifest to score")
    p.add_argument("--report-dir", metavar="DIR", help="where metrics.json goes (default: the run dir)")

    p = sub.add_parser("predict", help="top-k labels for a manifest or one image + text",
                       formatter_class=_formatter,
                       description="Predict with a trained run. Writes JSONL (one line per row: row, "
                                   "labels, scores, true_label when known) to --output, or prints it.",
                       epilog="examples:\n  tfmm predict --model runs/products --data new.csv --output preds.jsonl\n"
                              "  tfmm predict --model runs/products --image shoe.jpg --text 'red running shoe'")
    p.add_argument("--model", required=True, metavar="RUN", help="a run directory from `tfmm train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="MANIFEST", help="manifest to predict (labels optional)")
    src.add_argument("--image", metavar="PATH", help="one image file (with --text)")
    p.add_argument("--text", metavar="STR", help="the caption for --image")
    p.add_argument("--output", metavar="FILE", help="JSONL file to write (default: print)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels per row (default: 5)")

    p = sub.add_parser("demo", help="train on generated data offline; compare fused vs single-modality",
                       formatter_class=_formatter,
                       description=textwrap.dedent("""\
                           Generate a seeded image+caption dataset whose label needs both inputs
                           (shape in the image, colour only in the caption), train the fused model
                           and the image-only and text-only baselines (MiniLM text encoder, VGG16
                           from random weights), print their test metrics and keep the fused run."""),
                       epilog="example:\n  tfmm demo --output-dir tfmm_demo")
    p.add_argument("--output-dir", default="tfmm_demo", metavar="DIR",
                   help="where data and runs go (default: tfmm_demo)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs per run (default: 5)")
    p.add_argument("--n-train", type=int, default=None, metavar="N", help="training rows (default: 1800)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="data and training seed (default: 0)")
    _add_prepare_parser(sub)
    return parser


def _add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="convert a manifest to sharded TFRecords",
                       formatter_class=_formatter,
                       description="Write a manifest's images (encoded bytes), captions and labels "
                                   "as sharded TFRecords plus manifest.json, for data that does not fit "
                                   "in memory or lives on remote storage (DIR may be gs://...). Pass DIR "
                                   "wherever a manifest is expected (--data, --val-data).",
                       epilog="example:\n  tfmm prepare --data data/train.csv --output-dir data/train_tfr --shards 8\n"
                              "  tfmm train --data data/train_tfr --val-data data/val.csv --output-dir runs/r")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="manifest to convert (labels optional)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder to write (local or gs://)")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="number of TFRecord files (default: one per ~128 MiB of images)")
    for flag in ("--image-col", "--text-col", "--label-col", "--skip-bad-rows"):
        p.add_argument(flag, **next(kw for f, _, _, kw in _CONFIG_FLAGS if f == flag))


def _cmd_prepare(args) -> int:
    from tfmm.config import DataConfig
    from tfmm.prepare import prepare_dataset

    names = {k: getattr(args, k) for k in ("image_col", "text_col", "label_col") if getattr(args, k)}
    path = prepare_dataset(args.data, args.output_dir, shards=args.shards, config=DataConfig(**names),
                           skip_bad_rows=bool(args.skip_bad_rows))
    print(f"wrote {path}")
    return 0


def config_from_args(args) -> "RunConfig":
    """The run config: ``--config`` file (or defaults), then every flag that was given."""
    from tfmm.config import RunConfig, load_config

    config = load_config(args.config) if args.config else RunConfig()
    sections = {}
    for flag, section, field, _ in _CONFIG_FLAGS:
        value = getattr(args, field)
        if value is not None:
            sections.setdefault(section, {})[field] = value
    return config.replace(**sections)


def _cmd_train(args) -> int:
    from tfmm.train import train

    config = config_from_args(args)
    result = train(config, args.data, args.val_data, args.output_dir)
    last = {k: round(v[-1], 4) for k, v in result.history.items()}
    print(f"trained {len(result.history.get('loss', []))} epoch(s); last epoch: {json.dumps(last)}")
    print(f"run directory: {result.run_dir}")
    return 0


def format_metrics_table(rows: dict) -> str:
    """A plain-text table: one line per named metrics dict."""
    keys = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "n_examples")
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(k.rjust(17) for k in keys)]
    for name, m in rows.items():
        cells = "".join((f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k])).rjust(17) for k in keys)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def _cmd_evaluate(args) -> int:
    from tfmm.evaluate import evaluate

    metrics = evaluate(args.model, args.data, report_dir=args.report_dir)
    print(format_metrics_table({"test": metrics}))
    print("\nper class:")
    for label, m in metrics["per_class"].items():
        print(f"  {label:30s} precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
              f"f1 {m['f1']:.4f}  support {m['support']}")
    print(f"\nwrote {os.path.join(args.report_dir or args.model, 'metrics.json')}")
    return 0


def _cmd_predict(args) -> int:
    import pandas as pd

    from tfmm.evaluate import predict

    if args.image is not None:
        if args.text is None:
            raise ValueError("--image needs --text (the caption that goes with it)")
        image = os.path.abspath(args.image)
        records = predict(args.model, pd.DataFrame({"image": [image], "text": [args.text]}), k=args.top_k)
    else:
        records = predict(args.model, args.data, k=args.top_k)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(lines)
        print(f"wrote {len(records)} prediction(s) to {args.output}")
    else:
        sys.stdout.write(lines)
    return 0


def _cmd_demo(args) -> int:
    from tfmm.demo import run_demo

    overrides = {k: v for k, v in (("epochs", args.epochs), ("n_train", args.n_train)) if v is not None}
    results = run_demo(args.output_dir, seed=args.seed, **overrides)
    print("\ntest metrics (label = colour + shape; shape is only in the image, colour only in the text):")
    print(format_metrics_table(results["metrics"]))
    print(f"\nfused run: {results['run_dirs']['fused']}")
    for line in results.get("notes", []):
        print(line)
    return 0


_COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "demo": _cmd_demo}
_COMMANDS["prepare"] = _cmd_prepare


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    from tfmm.data import ManifestError

    try:
        return _COMMANDS[args.command](args)
    except (ManifestError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        if args.verbose:
            raise
        print(f"tfmm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
