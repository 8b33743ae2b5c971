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
    ("--task", "model", "task", dict(choices=["classification", "binary", "multilabel", "matching", "contrastive"],
                                     help="what the model learns (default: classification); see README, Tasks")),
    ("--negatives", "data", "negatives", dict(
        type=int, metavar="N", help="--task matching: add N negatives per positive pair (its image with "
                                    "captions of other rows, seeded) (default: 0)")),
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
    ("--max-image-pixels", "data", "max_image_pixels", dict(
        type=int, metavar="N", help="refuse images whose header claims more pixels (default: 40000000)")),
    ("--allow-outside-root", "data", "allow_outside_root", dict(
        action="store_true", default=None,
        help="accept image paths outside the manifest's folder ('..', absolute, symlinks)")),
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
    ("--devices", "train", "devices", dict(
        metavar="LIST", help="devices for --strategy mirrored, e.g. GPU:0,GPU:1 (default: all GPUs)")),
    ("--scale-learning-rate", "train", "scale_learning_rate", dict(
        action="store_true", default=None,
        help="multiply --learning-rate by the number of replicas (linear scaling rule)")),
    ("--save-every", "train", "save_every", dict(
        type=int, metavar="N", help="also back up the training state every N steps, for resuming "
                                    "long epochs (default: 0, at epoch ends only)")),
]

# Performance options (tfmm.cache, tfmm.precision, the tf.data pipeline): see README, Speed.
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
  tfmm train --data train.csv --output-dir runs/r3 --strategy mirrored --devices GPU:0,GPU:1
  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \\
      tfmm train --data train.csv --output-dir runs/r4 --strategy multi_worker

Rerunning a killed run with the same --output-dir resumes it (at the start of the
interrupted epoch); a finished run is refused unless --overwrite is given.
"""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=36)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfmm",
        description="Image + text models for Keras 3 / TensorFlow: train, evaluate, predict, export for "
                    "TF Serving, validate data, and an offline demo.",
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
    p.add_argument("--overwrite", action="store_true",
                   help="discard a previous run in --output-dir and train from scratch (without it, an "
                        "interrupted run resumes and a finished one is refused)")
    for flag, _, _, kwargs in _CONFIG_FLAGS:
        p.add_argument(flag, **kwargs)

    p = sub.add_parser("evaluate", help="score a labeled manifest, write metrics.json and plots",
                       formatter_class=_formatter,
                       description="Evaluate a trained run on a labeled manifest: accuracy, balanced "
                                   "accuracy, macro/weighted precision/recall/F1, per-class numbers, "
                                   "the confusion matrix, and ROC-AUC/PR-AUC for binary tasks. Writes "
                                   "metrics.json, per_class.csv, confusion_matrix.png (and "
                                   "roc_curve.png, pr_curve.png) to the report dir.",
                       epilog="examples:\n  tfmm evaluate --model runs/products --data data/test.csv\n"
                              "  tfmm evaluate --model runs/products --data data/test.csv "
                              "--report-dir reports/products --ablate")
    p.add_argument("--model", required=True, metavar="RUN", help="a run directory from `tfmm train`")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="labeled manifest to score")
    p.add_argument("--report-dir", metavar="DIR", help="where the report files go (default: the run dir)")
    p.add_argument("--ablate", action="store_true",
                   help="also score with the image blanked (black) and with the text blanked (empty "
                        "caption) and report each metric's drop (ablation.json)")

    p = sub.add_parser("predict", help="top-k labels for a manifest or one image + text",
                       formatter_class=_formatter,
                       description="Predict with a trained run. Writes JSONL (one line per row: row, "
                                   "labels, scores, true_label when known) to --output, or prints it.",
                       epilog="examples:\n  tfmm predict --model runs/products --data new.csv --output preds.jsonl\n"
                              "  tfmm predict --model runs/products --image shoe.jpg --text 'red running shoe'\n"
                              "  tfmm predict --model saved_models/products --request request.json\n"
                              "  tfmm predict --model runs/clip --data photos.csv --zero-shot-labels cat,dog,car \\\n"
                              "      --prompt 'a photo of a {}'")
    p.add_argument("--model", required=True, metavar="RUN|SAVEDMODEL",
                   help="a run directory from `tfmm train`, or a SavedModel from `tfmm export` (a version "
                        "folder, or an export root: its highest version)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="MANIFEST", help="manifest to predict (labels optional)")
    src.add_argument("--image", metavar="PATH", help="one image file (with --text)")
    src.add_argument("--request", metavar="JSON", help="a TF Serving REST predict body (SavedModel only); "
                                                       "prints the response body TF Serving would return")
    p.add_argument("--text", metavar="STR", help="the caption for --image")
    p.add_argument("--output", metavar="FILE", help="JSONL file to write (default: print)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels per row (default: 5)")
    p.add_argument("--zero-shot-labels", metavar="L1,L2,...",
                   help="contrastive runs: classify the images among these comma-separated labels "
                        "(no classifier head; --text not needed)")
    p.add_argument("--prompt", metavar="TEMPLATE",
                   help="zero-shot prompt, {} is replaced by each label (default: 'a photo of a {}')")

    p = sub.add_parser("validate", help="check every row of a manifest; exit 1 if any is bad",
                       formatter_class=_formatter,
                       description="Check a manifest the way training does, without training: every "
                                   "problem is listed with row, path and reason. Exits 0 when all rows "
                                   "are usable, 1 otherwise, so it can gate a data pipeline.",
                       epilog="examples:\n  tfmm validate --data data/train.csv\n"
                              "  tfmm validate --data data/test.csv --model runs/products   # labels known?")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="manifest to check")
    p.add_argument("--model", metavar="RUN", help="a trained run: also check labels are known to it "
                                                  "and count texts longer than its sequence length")
    p.add_argument("--no-labels", action="store_true", help="the manifest has no label column (prediction input)")
    p.add_argument("--task", choices=["classification", "binary", "multilabel", "matching", "contrastive"],
                   help="how labels are read (default: the run's task, else classification)")
    for flag in ("--image-col", "--text-col", "--label-col", "--max-image-pixels", "--allow-outside-root"):
        spec = next(f for f in _CONFIG_FLAGS if f[0] == flag)
        p.add_argument(flag, **spec[3])
    p.add_argument("--report", metavar="FILE", help="also write every problem to this CSV file")

    p = sub.add_parser("hub-export", help="write a KerasHub BERT (e.g. minilm) as a TF-Hub BERT pair",
                       formatter_class=_formatter,
                       description="Write DIR/preprocess and DIR/encoder in the TF-Hub BERT format "
                                   "(strings -> input_word_ids/input_mask/input_type_ids; encoder -> "
                                   "pooled_output, sequence_output, default, encoder_outputs). They load "
                                   "with tensorflow + tensorflow_text alone, and tfmm uses them with "
                                   "--text-encoder tfhub:DIR/preprocess,DIR/encoder.",
                       epilog="example:\n  tfmm hub-export --text-encoder minilm --output-dir saved_models/hub_minilm")
    p.add_argument("--text-encoder", "--spec", dest="spec", default="minilm", metavar="SPEC",
                   help="minilm (default), keras_nlp:PRESET_OR_DIR or keras_hub:PRESET_OR_DIR")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder to write preprocess/ and encoder/ into")
    p.add_argument("--seq-length", "--sequence-length", dest="seq_length", type=int, default=128, metavar="N",
                   help="the preprocessor's default sequence length (default: 128; others via bert_pack_inputs)")

    p = sub.add_parser("export", help="write a SavedModel for TF Serving (raw image bytes + text in)",
                       formatter_class=_formatter,
                       description=textwrap.dedent("""\
                           Export a trained run as EXPORT_DIR/VERSION for TF Serving: signature
                           serving_default takes image_bytes and text (DT_STRING [-1]) and returns
                           scores and labels; decoding, resizing and tokenizing run inside the graph.
                           The version is checked (fresh-process load, predictions vs the trained
                           model, which TF Serving releases have its ops) before it appears, and is
                           never overwritten. Warmup requests (assets.extra/tf_serving_warmup_requests)
                           come from the run's validation rows unless --warmup-data names others."""),
                       epilog="examples:\n  tfmm export --model runs/products\n"
                              "  tfmm export --model runs/products --warmup-data data/holdout.csv\n"
                              "  tfmm export --model runs/products --export-dir saved_models/products --version 3")
    p.add_argument("--model", required=True, metavar="RUN", help="a run directory from `tfmm train`")
    p.add_argument("--export-dir", metavar="DIR", help="export root (default: saved_models/<run folder name>)")
    p.add_argument("--version", type=int, metavar="N", help="version to write (default: the next integer)")
    p.add_argument("--model-name", metavar="NAME", help="model name for TF Serving (default: export root name)")
    p.add_argument("--warmup-data", metavar="MANIFEST",
                   help="manifest whose rows become the warmup requests and the check sample (default: the "
                        "validation manifest `tfmm train` recorded in the run; without one, synthetic images, "
                        "and the output says so)")
    p.add_argument("--warmup-records", type=int, default=32, metavar="N",
                   help="warmup requests to write, at most 1000; 0 writes no warmup file (default: 32)")
    p.add_argument("--no-check", action="store_true", help="skip the checks (not recommended)")

    p = sub.add_parser("check-export", help="check an exported SavedModel (load, predictions, ops)",
                       formatter_class=_formatter,
                       description="Load the export in a fresh Python process importing only tensorflow "
                                   "(tensorflow_text too only when the graph has non-core ops), compare its "
                                   "predictions on raw files with the trained model's, say which TF Serving "
                                   "releases load its ops (from tfmm's table, not from what is installed), "
                                   "read its warmup file. Exit status 1 when a check fails.",
                       epilog="example:\n  tfmm check-export saved_models/products/1")
    p.add_argument("dir", metavar="DIR", help="a version folder, or an export root (its highest version)")

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
    p.add_argument("--export-dir", default="saved_models/demo", metavar="DIR",
                   help="where the fused model is exported for TF Serving (default: saved_models/demo)")
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
    from tfmm.data.tfrecords import prepare_dataset

    names = {k: getattr(args, k) for k in ("image_col", "text_col", "label_col") if getattr(args, k)}
    path = prepare_dataset(args.data, args.output_dir, shards=args.shards, config=DataConfig(**names),
                           skip_bad_rows=bool(args.skip_bad_rows))
    print(f"wrote {path}")
    return 0


def config_from_args(args):
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
    from tfmm.training.train import train

    config = config_from_args(args)
    result = train(config, args.data, args.val_data, args.output_dir, overwrite=args.overwrite)
    last = {k: round(v[-1], 4) for k, v in result.history.items()}
    if result.initial_epoch:
        print(f"resumed at epoch {result.initial_epoch + 1} of {result.config.train.epochs} "
              f"({result.initial_epoch} epoch(s) were done before the interruption)")
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
    from tfmm.evaluation import reports
    from tfmm.evaluation.evaluate import evaluate

    metrics = evaluate(args.model, args.data, report_dir=args.report_dir, ablate=args.ablate)
    if metrics.get("task") in ("multilabel", "matching", "contrastive"):
        from tfmm.evaluation.task_eval import format_summary

        print(format_summary(metrics))
        if metrics["task"] != "contrastive":  # retrieval has no classes
            print("\nper class:")
            for label, m in metrics["per_class"].items():
                print(f"  {label:30s} precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
                      f"f1 {m['f1']:.4f}  support {m['support']}")
        print(f"\nwrote {os.path.join(args.report_dir or args.model, 'metrics.json')}")
        return 0
    print(reports.format_report(metrics))
    if args.ablate:
        print()
        print(reports.format_ablation(metrics["ablation"]))
    print(f"\nwrote the report to {os.path.abspath(args.report_dir or args.model)}")
    return 0


def _write_or_print(text: str, output, what: str) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {what} to {output}")
    else:
        sys.stdout.write(text)


def _predict_saved_model(args) -> int:
    """``tfmm predict`` on an exported SavedModel: a REST body, a manifest or one image."""
    from tfmm.serving import saved_model
    from tfmm.serving import protocol

    if not saved_model.is_saved_model(args.model):
        raise ValueError(f"--request needs a SavedModel (a folder with saved_model.pb, or an export root); "
                         f"received {args.model!r}. Export the run first: tfmm export --model {args.model}")
    if args.request is not None:
        import tensorflow as tf

        with open(args.request, encoding="utf-8") as f:
            body = f.read()
        try:
            response, status = protocol.predict_rest(args.model, body), 0
        except (ValueError, tf.errors.OpError) as e:  # TF Serving answers HTTP 400 with this body
            response, status = {"error": getattr(e, "message", str(e))}, 1
            print(f"tfmm predict: the request failed; TF Serving would answer HTTP 400 with: {response}",
                  file=sys.stderr)
        _write_or_print(json.dumps(response, indent=4) + "\n", args.output, "the response body")
        return status
    if args.image is not None:
        if args.text is None:
            raise ValueError("--image needs --text (the caption that goes with it)")
        records = protocol.predict_saved_model(args.model, _single_example(args), k=args.top_k)
    else:
        records = protocol.predict_saved_model(args.model, args.data, k=args.top_k)
    _write_or_print("".join(json.dumps(r) + "\n" for r in records), args.output, f"{len(records)} prediction(s)")
    return 0


def _single_example(args):
    """``--image PATH --text STR`` as a one-row manifest rooted at the image's folder."""
    import pandas as pd

    from tfmm.data.manifest import read_manifest

    image = os.path.abspath(args.image)
    frame = pd.DataFrame({"image": [image], "text": [args.text if args.text is not None else ""]})
    return read_manifest(frame, root=os.path.dirname(image), require_labels=False)


def _cmd_predict(args) -> int:
    from tfmm.serving import saved_model
    from tfmm.serving import protocol
    from tfmm.evaluation.evaluate import predict

    if args.request is not None or saved_model.is_saved_model(args.model):
        return _predict_saved_model(args)
    zero_shot = None
    if args.zero_shot_labels is not None:
        zero_shot = [x.strip() for x in args.zero_shot_labels.split(",") if x.strip()]
    elif args.prompt is not None:
        raise ValueError("--prompt needs --zero-shot-labels")
    extra = dict(zero_shot_labels=zero_shot, prompt=args.prompt) if zero_shot is not None else {}
    if args.image is not None:
        if args.text is None and zero_shot is None:
            raise ValueError("--image needs --text (the caption that goes with it)")
        records = predict(args.model, _single_example(args), k=args.top_k, **extra)
    else:
        records = predict(args.model, args.data, k=args.top_k, **extra)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(lines)
        print(f"wrote {len(records)} prediction(s) to {args.output}")
    else:
        sys.stdout.write(lines)
    return 0


def _cmd_export(args) -> int:
    from tfmm.serving.export_check import ExportCheckError
    from tfmm.serving.export import export_for_serving

    try:
        result = export_for_serving(
            args.model, args.export_dir, version=args.version, model_name=args.model_name,
            warmup_data=args.warmup_data, warmup_records=args.warmup_records, check=not args.no_check,
        )
    except ExportCheckError as e:
        print(f"tfmm export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported {result.path} (model {result.model_name!r}, version {result.version})")
    print(f"  serving_default: {result.metadata['signatures']['serving_default']}")
    if result.report is not None:
        print("checks:\n" + "\n".join("  " + str(c) for c in result.report.checks))
    print(f"warmup: {result.warmup_source}")
    print(f"TF Serving: {result.metadata['serving']['summary']}")
    print(f"TF Serving configs: {os.path.join(result.export_root, 'models.config')}, "
          f"{os.path.join(result.export_root, 'batching.config')} (Docker instructions: README, Serve with Docker)")
    return 0


def _cmd_check_export(args) -> int:
    from tfmm.serving.export_check import check_export

    report = check_export(args.dir)
    print(f"checked {report.path}")
    print(report)
    print("all checks passed" if report.ok else "SOME CHECKS FAILED")
    return 0 if report.ok else 1


def _cmd_demo(args) -> int:
    from tfmm.demo import run_demo

    overrides = {k: v for k, v in (("epochs", args.epochs), ("n_train", args.n_train)) if v is not None}
    results = run_demo(args.output_dir, seed=args.seed, export_dir=args.export_dir, **overrides)
    print("\ntest metrics (label = colour + shape; shape is only in the image, colour only in the text):")
    print(format_metrics_table(results["metrics"]))
    print(f"\nfused run: {results['run_dirs']['fused']}")
    for line in results.get("notes", []):
        print(line)
    return 0


def _cmd_validate(args) -> int:
    import csv

    from tfmm.data.manifest import read_manifest, validate_manifest
    from tfmm.config import RunConfig

    labels, preprocessor, config = None, None, RunConfig()
    if args.model:
        from tfmm.run_dir import load_run

        run = load_run(args.model)
        config, preprocessor = run.config, run.preprocessor
        labels = None if args.no_labels else run.labels
    overrides = {f: getattr(args, f) for f in ("image_col", "text_col", "label_col", "max_image_pixels",
                                                "allow_outside_root") if getattr(args, f) is not None}
    config = config.replace(data=overrides)
    task = args.task or config.model.task
    manifest = read_manifest(args.data, config.data, require_labels=not args.no_labels)
    problems = validate_manifest(manifest, task=task, labels=labels, config=config.data)
    for p in problems:
        print(p)
    if args.report:
        with open(args.report, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "row", "image", "reason"])
            writer.writerows([p.source, p.row, p.image, p.reason] for p in problems)
    total = len(manifest) + len({p.row for p in manifest.problems})
    bad = len({p.row for p in problems})
    if preprocessor is not None:
        from tfmm.data.validation import count_truncated

        truncated = count_truncated(manifest.frame["text"].tolist(), preprocessor)
        if truncated:
            print(f"note: {truncated} text(s) are longer than {config.data.sequence_length} tokens "
                  "and will be truncated")
    print(f"{args.data}: {total - bad} of {total} row(s) usable, {bad} bad ({len(problems)} problem(s))")
    return 1 if bad else 0


def _cmd_hub_export(args) -> int:
    from tfmm.models.hub_export import export_hub_bert_from_spec

    preprocess, encoder = export_hub_bert_from_spec(args.spec, args.output_dir, seq_length=args.seq_length)
    print(f"wrote {preprocess}\nwrote {encoder}")
    print(f"use it with: --text-encoder tfhub:{preprocess},{encoder}")
    return 0


_COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "demo": _cmd_demo,
             "export": _cmd_export, "check-export": _cmd_check_export, "validate": _cmd_validate,
             "hub-export": _cmd_hub_export}
_COMMANDS["prepare"] = _cmd_prepare


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    if not args.verbose:  # tf.distribute logs every collective it builds at INFO
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
    from tfmm.data.validation import ManifestError

    try:
        return _COMMANDS[args.command](args)
    except (ManifestError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        if args.verbose:
            raise
        print(f"tfmm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
