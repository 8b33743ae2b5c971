"""The ``tfmm`` command line's parser: one ``_add_<command>_parser`` per subcommand; the flags
that override a run config come from :mod:`tfmm.cli_flags`."""

from __future__ import annotations

import argparse
import textwrap

from tfmm.cli_flags import CHECK_FLAGS, CONFIG_FLAGS, READ_FLAGS, add_config_flags
from tfmm.cli_flags import config_from_args, read_flags  # noqa: F401  (the commands' entry points)
from tfmm.tasks import TASKS


_SOURCES_HELP = ("a manifest (.csv, .tsv, .jsonl, .parquet), class folders (captions in <stem>.txt), an imagefolder "
                 "(metadata.jsonl), COCO captions (.json) or a `tfmm prepare` folder; local or gs://, s3://")

_TRAIN_EXAMPLES = """\
examples:
  tfmm train --data data/train.csv --val-data data/val.csv --output-dir runs/products
  tfmm train --data train.jsonl --output-dir runs/r1 --image-encoder resnet50 \\
      --image-weights ~/weights/resnet50_notop.h5 --freeze-image --epochs 5
  tfmm train --config cfg.yaml --data train.csv --output-dir runs/r2 --modalities image
  tfmm train --data photos/ --val-data photos_val/ --output-dir runs/pets   # class folders + <stem>.txt
  tfmm train --data gs://bucket/coco/captions_train.json --task contrastive --output-dir runs/clip
  tfmm train --data train.csv --output-dir runs/r3 --strategy mirrored --devices GPU:0,GPU:1
  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \\
      tfmm train --data train.csv --output-dir runs/r4 --strategy multi_worker

Rerunning a killed run with the same --output-dir resumes it (at the start of the
interrupted epoch); a finished run is refused unless --overwrite is given.
"""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=36)


def build_parser() -> argparse.ArgumentParser:
    """The ``tfmm`` parser: one subcommand per ``_add_<command>_parser``."""
    parser = argparse.ArgumentParser(
        prog="tfmm",
        description="Image + text models for Keras 3 / TensorFlow: train, evaluate, predict, export for "
                    "TF Serving, validate data, and an offline demo.",
        epilog="Run `tfmm COMMAND --help` for each command's options and examples.",
        formatter_class=_formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train_parser, _add_evaluate_parser, _add_predict_parser, _add_validate_parser,
                _add_hub_export_parser, _add_export_parser, _add_check_export_parser, _add_demo_parser,
                _add_prepare_parser, _add_manifest_parser, _add_tune_parser):
        add(sub)
    return parser


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a fused model on a manifest", formatter_class=_formatter,
                       description="Train an image+text model with model.fit and write a run directory "
                                   "(config.yaml, labels.txt, model.keras, checkpoints/, logs/).",
                       epilog=_TRAIN_EXAMPLES)
    p.add_argument("--data", required=True, metavar="SOURCE", help=f"training data: {_SOURCES_HELP}")
    p.add_argument("--val-data", metavar="SOURCE", help="validation data (any of the same shapes)")
    p.add_argument("--output-dir", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON config; flags given here override it")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a previous run in --output-dir and train from scratch (without it, an "
                        "interrupted run resumes and a finished one is refused)")
    add_config_flags(p, [f[0] for f in CONFIG_FLAGS])


def _add_evaluate_parser(sub) -> None:
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
    p.add_argument("--data", required=True, metavar="SOURCE", help=f"labeled data to score: {_SOURCES_HELP}")
    p.add_argument("--report-dir", metavar="DIR", help="where the report files go (default: the run dir)")
    add_config_flags(p, READ_FLAGS + ("--allow-outside-root",))
    p.add_argument("--ablate", action="store_true",
                   help="also score with the image blanked (black) and with the text blanked (empty "
                        "caption) and report each metric's drop (ablation.json)")


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k labels for a manifest or one image + text",
                       formatter_class=_formatter,
                       description="Predict with a trained run, or zero-shot with a pretrained CLIP / "
                                   "SigLIP (no training). Writes JSONL (one line per row: row, "
                                   "labels, scores, true_label when known) to --output, or prints it.",
                       epilog="examples:\n  tfmm predict --model runs/products --data new.csv --output preds.jsonl\n"
                              "  tfmm predict --model runs/products --image shoe.jpg --text 'red running shoe'\n"
                              "  tfmm predict --model saved_models/products --request request.json\n"
                              "  tfmm predict --model runs/clip --data photos.csv --zero-shot-labels cat,dog,car \\\n"
                              "      --prompt 'a photo of a {}'\n"
                              "  tfmm predict --model clip:presets/clip_vit_base_patch32 --data photos.csv \\\n"
                              "      --zero-shot-labels cat,dog,car   # a pretrained dual encoder, untrained")
    p.add_argument("--model", required=True, metavar="RUN|SAVEDMODEL|clip:DIR|siglip:DIR",
                   help="a run directory from `tfmm train`, a SavedModel from `tfmm export` (a version "
                        "folder, or an export root: its highest version), or a pretrained dual encoder "
                        "(clip:PRESET_OR_DIR, siglip:PRESET_OR_DIR: zero-shot labels, or each row's "
                        "similarity and embeddings)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="SOURCE", help="data to predict (labels optional), any shape")
    src.add_argument("--image", metavar="PATH", help="one image file (with --text)")
    src.add_argument("--request", metavar="JSON", help="a TF Serving REST predict body (SavedModel only); "
                                                       "prints the response body TF Serving would return")
    p.add_argument("--text", metavar="STR", help="the caption for --image")
    p.add_argument("--output", metavar="FILE", help="JSONL file to write (default: print)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels per row (default: 5)")
    p.add_argument("--zero-shot-labels", metavar="L1,L2,...",
                   help="contrastive runs and clip:/siglip: models: classify the images among these "
                        "comma-separated labels (no classifier head; --text not needed)")
    p.add_argument("--prompt", metavar="TEMPLATE",
                   help="zero-shot prompt, {} is replaced by each label (default: 'a photo of a {}')")
    add_config_flags(p, READ_FLAGS + ("--allow-outside-root",))


def _add_validate_parser(sub) -> None:
    p = sub.add_parser("validate", help="check every row of a manifest; exit 1 if any is bad",
                       formatter_class=_formatter,
                       description="Check a manifest the way training does, without training: every "
                                   "problem is listed with row, path and reason. Exits 0 when all rows "
                                   "are usable, 1 otherwise, so it can gate a data pipeline.",
                       epilog="examples:\n  tfmm validate --data data/train.csv\n"
                              "  tfmm validate --data data/test.csv --model runs/products   # labels known?")
    p.add_argument("--data", required=True, metavar="SOURCE", help=f"data to check: {_SOURCES_HELP}")
    p.add_argument("--model", metavar="RUN", help="a trained run: also check labels are known to it "
                                                  "and count texts longer than its sequence length")
    _add_check_args(p)


def _add_check_args(p) -> None:
    """The arguments ``tfmm validate`` and ``tfmm manifest`` share: how a source is read and checked."""
    p.add_argument("--no-labels", action="store_true", help="the data has no labels (prediction input)")
    p.add_argument("--task", choices=list(TASKS),
                   help="how labels are read (default: the run's task, else classification)")
    add_config_flags(p, READ_FLAGS + CHECK_FLAGS)
    p.add_argument("--report", metavar="FILE", help="also write every problem to this CSV file")


def _add_hub_export_parser(sub) -> None:
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


def _add_export_parser(sub) -> None:
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


def _add_check_export_parser(sub) -> None:
    p = sub.add_parser("check-export", help="check an exported SavedModel (load, predictions, ops)",
                       formatter_class=_formatter,
                       description="Load the export in a fresh Python process importing only tensorflow "
                                   "(tensorflow_text too only when the graph has non-core ops), compare its "
                                   "predictions on raw files with the trained model's, say which TF Serving "
                                   "releases load its ops (from tfmm's table, not from what is installed), "
                                   "read its warmup file. Exit status 1 when a check fails.",
                       epilog="example:\n  tfmm check-export saved_models/products/1")
    p.add_argument("dir", metavar="DIR", help="a version folder, or an export root (its highest version)")


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train on generated data offline; compare fused vs single-modality",
                       formatter_class=_formatter,
                       description=textwrap.dedent("""\
                           Generate a seeded image+caption dataset whose label needs both inputs
                           (shape in the image, colour only in the caption), train the fused model
                           and the image-only and text-only baselines on frozen pretrained encoders
                           read offline (MiniLM for text, EfficientNet-Lite0 ImageNet for images; their
                           features are computed once for all three runs), print their test metrics,
                           keep the fused run and export it for TF Serving."""),
                       epilog="example:\n  tfmm demo --output-dir tfmm_demo")
    p.add_argument("--output-dir", default="tfmm_demo", metavar="DIR",
                   help="where data and runs go (default: tfmm_demo)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="at most N epochs per run, stopped early on validation (default: 50, the "
                        "cached-head default)")
    p.add_argument("--n-train", type=int, default=None, metavar="N", help="training rows (default: 1800)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="data and training seed (default: 0)")
    p.add_argument("--export-dir", default="saved_models/demo", metavar="DIR",
                   help="where the fused model is exported for TF Serving (default: saved_models/demo)")


def _add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="convert a manifest to sharded TFRecords",
                       formatter_class=_formatter,
                       description="Write a manifest's images (encoded bytes), captions and labels "
                                   "as sharded TFRecords plus manifest.json, for data that does not fit "
                                   "in memory or lives on remote storage (DIR may be gs://...). Pass DIR "
                                   "wherever a manifest is expected (--data, --val-data).",
                       epilog="example:\n  tfmm prepare --data data/train.csv --output-dir data/train_tfr --shards 8\n"
                              "  tfmm train --data data/train_tfr --val-data data/val.csv --output-dir runs/r")
    p.add_argument("--data", required=True, metavar="SOURCE", help=f"data to convert (labels optional): {_SOURCES_HELP}")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder to write (local or gs://)")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="number of TFRecord files (default: one per ~128 MiB of images)")
    add_config_flags(p, READ_FLAGS + CHECK_FLAGS + ("--skip-bad-rows",))


def _add_manifest_parser(sub) -> None:
    p = sub.add_parser("manifest", help="read any data source and write it as a CSV manifest", formatter_class=_formatter,
                       description="Read SOURCE as training would, check every row as `tfmm validate` does, and "
                                   "write the rows read as a CSV (image, text, label; paths relative to its folder) "
                                   "to inspect and version. Exits 1 when rows are bad (written unless --skip-bad-rows).",
                       epilog="examples:\n  tfmm manifest data/pets --output data/pets.csv\n"
                              "  tfmm manifest gs://bucket/coco/captions.json --task contrastive --output val.csv")
    p.add_argument("source", metavar="SOURCE", help=_SOURCES_HELP)
    p.add_argument("--output", required=True, metavar="FILE.csv", help="CSV manifest to write (local or remote)")
    _add_check_args(p)
    p.add_argument("--skip-bad-rows", action="store_true", help="leave the bad rows out of the written manifest")


_TUNE_DESCRIPTION = """\
Search hyperparameters with KerasTuner (pip install "tfmm[tune]"). Each trial is an ordinary
`tfmm train` run in DIR/trials/<id>, seeded with --seed, scored by --objective on --val-data at
its best epoch. Writes DIR/trials.csv (one row per trial), DIR/best_config.yaml (the best
trial's full config, for `tfmm train --config`) and prints the command that retrains it.
KerasTuner's records stay in DIR/keras_tuner: rerunning the same command continues the search.

search space (defaults; a --tune-* option replaces one, a single value fixes it):
  learning rate   log-uniform, 1e-4..1e-2 when every encoder is frozen, else 1e-5..1e-3
  dropout         0.0..0.5 in steps of 0.1
  fusion          concat, sum, mean, gated (with both modalities)
  projection dim  64, 128, 256, 512
  unfrozen depth  0, 1, 2 top blocks of each encoder the base config trains (not frozen);
                  for a frozen encoder only when asked: 0 keeps it frozen, N trains its top N
A train flag for a searched field (--fusion gated, --dropout 0.1, ...) fixes that field.
Frozen encoders' features are computed once and shared by all trials (DIR/feature_cache)."""

_TUNE_EXAMPLES = """\
examples:
  tfmm tune --data train.csv --val-data val.csv --trials 20 --output-dir tune/products \\
      --freeze-image --freeze-text --image-encoder efficientnet_lite0
  tfmm tune --data train.csv --val-data val.csv --trials 10 --config base.yaml \\
      --tune-fusions concat,gated --tune-learning-rate 1e-4,3e-3 --objective val_accuracy
  tfmm tune --data train.csv --val-data val.csv --trials 8 --algorithm bayesian \\
      --freeze-text --tune-unfreeze-text-layers 0,1,2
"""


def _number_list(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s; received {text!r}") from None
    parse.__name__ = f"{kind.__name__} list"
    return parse


def _names(text: str):
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_tune_parser(sub) -> None:
    from tfmm.tuning.runner import ALGORITHMS  # no KerasTuner import: that waits for a search

    p = sub.add_parser("tune", help="search hyperparameters with KerasTuner (one tfmm run per trial)",
                       formatter_class=_formatter, description=_TUNE_DESCRIPTION, epilog=_TUNE_EXAMPLES)
    p.add_argument("--data", required=True, metavar="SOURCE", help=f"training data: {_SOURCES_HELP}")
    p.add_argument("--val-data", required=True, metavar="SOURCE", help="validation data: the objective is measured on it")
    p.add_argument("--output-dir", default="tfmm_tune", metavar="DIR",
                   help="trials, KerasTuner records, trials.csv, best_config.yaml (default: tfmm_tune)")
    p.add_argument("--config", metavar="FILE", help="base YAML/JSON config; flags given here override it")
    p.add_argument("--trials", type=int, default=10, metavar="N", help="number of trials (default: 10)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="random",
                   help="KerasTuner oracle: random search or Bayesian optimization (default: random)")
    p.add_argument("--objective", default="val_loss", metavar="NAME[:min|max]",
                   help="metric to optimize at each run's best epoch, e.g. val_accuracy; the direction is "
                        "min for losses and errors, else max (default: val_loss)")
    p.add_argument("--overwrite", action="store_true", help="discard a previous search in --output-dir")
    g = p.add_argument_group("search space")
    g.add_argument("--tune-learning-rate", type=_number_list(float), metavar="MIN,MAX", help="learning rate range (log)")
    g.add_argument("--tune-dropout", type=_number_list(float), metavar="MIN,MAX", help="dropout range (steps of 0.1)")
    g.add_argument("--tune-fusions", type=_names, metavar="LIST", help="fusions to try, e.g. concat,gated")
    g.add_argument("--tune-projection-dims", type=_number_list(int), metavar="LIST", help="projection widths, e.g. 128,256")
    g.add_argument("--tune-unfreeze-image-blocks", type=_number_list(int), metavar="LIST",
                   help="top image-encoder blocks to train, e.g. 0,1,2")
    g.add_argument("--tune-unfreeze-text-layers", type=_number_list(int), metavar="LIST",
                   help="top text-encoder layers to train, e.g. 0,1,2")
    add_config_flags(p, [f[0] for f in CONFIG_FLAGS])
