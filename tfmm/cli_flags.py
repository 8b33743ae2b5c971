"""The flags of ``tfmm`` that set run-config fields: one table (``_CONFIG_FLAGS``: flag, config
section, field, argparse options) from which the parser adds its options
(:func:`add_config_flags`) and :func:`config_from_args` builds the run config."""

from __future__ import annotations

import argparse
import dataclasses

from tfmm import config
from tfmm.tasks import TASKS


def _with_default(section: str, field: str, kwargs: dict) -> dict:
    """``kwargs`` whose help ends with the config dataclass's default, unless it describes the
    default itself (flags whose default depends on the run)."""
    if "default" in kwargs.get("help", "") or kwargs.get("action") == "store_true":
        return kwargs
    fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
    value = fields[field].default
    return {**kwargs, "help": f"{kwargs.get('help', '')} (default: {value})"}


_SECTIONS = {"model": config.ModelConfig, "data": config.DataConfig, "train": config.TrainConfig}


# (flag, config section, field, argparse kwargs). Defaults come from the config
# dataclasses, so argparse defaults are None: only flags given override a --config file.
CONFIG_FLAGS = [
    ("--task", "model", "task", dict(choices=list(TASKS),
                                     help="what the model learns; see README, Tasks")),
    ("--negatives", "data", "negatives", dict(
        type=int, metavar="N", help="--task matching: add N negatives per positive pair (its image with "
                                    "captions of other rows, seeded)")),
    ("--text-encoder", "model", "text_encoder", dict(
        metavar="SPEC", help="minilm (offline all-MiniLM-L6-v2), keras_hub:PRESET_OR_DIR (any KerasHub text "
                             "backbone: BERT, DistilBERT, RoBERTa, XLM-R, DeBERTa-v3, GPT-2, Gemma, Llama, "
                             "Qwen...; keras_nlp: is an alias), tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE, or "
                             "embedding-bag (light, trained from scratch)")),
    ("--text-pooling", "model", "text_pooling", dict(
        choices=config.POOLINGS, help="mean over the padding mask, cls (the pooler, else the first token), "
                                      "or last kept token (decoders)")),
    ("--text-dtype", "model", "text_dtype", dict(
        choices=config.TEXT_DTYPES, help="text backbone compute dtype (16-bit for large frozen backbones)")),
    ("--text-lora-rank", "model", "text_lora_rank", dict(
        type=int, metavar="R", help="train LoRA adapters of rank R on the text backbone, 0: off")),
    ("--image-encoder", "model", "image_encoder", dict(
        metavar="NAME", help="keras.applications model (vgg16, resnet50, ...), efficientnet_lite0/1/2 "
                             "(offline ImageNet weights) or keras_hub:PRESET_OR_DIR")),
    ("--image-weights", "model", "image_weights", dict(
        metavar="imagenet|none|PATH", help="image encoder weights: imagenet, none or a local file "
                                           "(.h5/.weights.h5; .pth for efficientnet_lite*)")),
    ("--fusion", "model", "fusion", dict(choices=config.FUSIONS,
                                         help="how branches are combined")),
    ("--modalities", "model", "modalities", dict(choices=config.MODALITIES,
                                                 help="train on both inputs or one (baselines)")),
    ("--projection-dim", "model", "projection_dim", dict(type=int, metavar="N",
                                                         help="width each branch is projected to")),
    ("--hidden-dim", "model", "hidden_dim", dict(type=int, metavar="N",
                                                 help="head hidden layer width, 0 for none")),
    ("--dropout", "model", "dropout", dict(type=float, metavar="X", help="dropout after fusion")),
    ("--feature-dropout", "model", "feature_dropout", dict(
        type=float, metavar="X", help="dropout on each branch's features before its projection "
                                      "(default: set by --preset; fast/balanced/best: 0.2, none: 0)")),
    ("--head-ensemble", "model", "head_ensemble", dict(
        type=int, metavar="N", help="average the scores of N heads; with two stages each is trained alone "
                                    "first (default: set by --preset; balanced/best: 5, else 1)")),
    ("--freeze-image", "model", "freeze_image", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="keep the image encoder's weights fixed (default: set by --preset; none: not frozen)")),
    ("--freeze-text", "model", "freeze_text", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="keep the text encoder's weights fixed (default: set by --preset; none: not frozen)")),
    ("--unfreeze-image-blocks", "model", "unfreeze_image_blocks", dict(
        type=int, metavar="N", help="train only the image encoder's top N blocks, 0: all (unless frozen) "
                                    "(default: set by --preset; none: 0)")),
    ("--unfreeze-text-layers", "model", "unfreeze_text_layers", dict(
        type=int, metavar="N", help="train only the text encoder's top N layers, 0: all (unless frozen) "
                                    "(default: set by --preset; none: 0)")),
    ("--image-size", "data", "image_size", dict(type=int, metavar="N",
                                                help="images are resized to NxN")),
    ("--sequence-length", "data", "sequence_length", dict(type=int, metavar="N",
                                                          help="text tokens per example")),
    ("--data-format", "data", "data_format", dict(
        choices=config.DATA_FORMATS, help="how --data is read; auto: from what the path points at")),
    ("--label-depth", "data", "label_depth", dict(
        type=int, metavar="N", help="class folders: folder levels that make the label")),
    ("--text-from", "data", "text_from", dict(
        choices=config.TEXT_SOURCES, help="class folders: caption from <stem>.txt or from the file name")),
    ("--image-col", "data", "image_col", dict(metavar="NAME", help="manifest image column")),
    ("--text-col", "data", "text_col", dict(metavar="NAME", help="manifest text column")),
    ("--label-col", "data", "label_col", dict(metavar="NAME", help="manifest label column")),
    ("--max-image-pixels", "data", "max_image_pixels", dict(
        type=int, metavar="N", help="refuse images whose header claims more pixels")),
    ("--allow-outside-root", "data", "allow_outside_root", dict(
        action="store_true", default=None,
        help="accept image paths outside the manifest's folder ('..', absolute, symlinks)")),
    ("--skip-bad-rows", "data", "skip_bad_rows", dict(
        action="store_true", default=None,
        help="skip invalid rows (written to RUN/skipped_rows.csv) instead of stopping")),
    ("--epochs", "train", "epochs", dict(
        type=int, metavar="N", help="passes over the data (default: set by --preset, else 10; 50 when only "
                                    "a head trains on cached features, stopped early by validation; "
                                    "two stages: stage 2's)")),
    ("--batch-size", "train", "batch_size", dict(type=int, metavar="N",
                                                 help="examples per device per step")),
    ("--learning-rate", "train", "learning_rate", dict(
        type=float, metavar="X", help="peak AdamW learning rate (default: set by --preset, else 1e-3 when "
                                      "every encoder is frozen, else 1e-4; two stages: stage 2's)")),
    ("--encoder-lr-scale", "train", "encoder_lr_scale", dict(
        type=float, metavar="X", help="encoders train at --learning-rate x X, the head at --learning-rate "
                                      "(default: set by --preset; balanced: 0.2, else 0.1)")),
    ("--weight-decay", "train", "weight_decay", dict(type=float, metavar="X", help="AdamW weight decay")),
    ("--warmup-fraction", "train", "warmup_fraction", dict(
        type=float, metavar="X", help="share of steps warming the learning rate up")),
    ("--early-stopping-patience", "train", "early_stopping_patience", dict(
        type=int, metavar="N", help="stop after N epochs without val_loss improvement, 0: off")),
    ("--strategy", "train", "strategy", dict(choices=config.STRATEGIES,
                                             help="tf.distribute strategy")),
    ("--seed", "train", "seed", dict(type=int, metavar="N", help="random seed")),
    ("--devices", "train", "devices", dict(
        metavar="LIST", help="devices for --strategy mirrored, e.g. GPU:0,GPU:1 (default: all GPUs)")),
    ("--scale-learning-rate", "train", "scale_learning_rate", dict(
        action="store_true", default=None,
        help="multiply --learning-rate by the number of replicas (linear scaling rule)")),
    ("--save-every", "train", "save_every", dict(
        type=int, metavar="N", help="also back up the training state every N steps, for resuming "
                                    "long epochs (default: 0, at epoch ends only)")),
]


# Performance options (tfmm.training.feature_cache, tfmm.training.precision, the tf.data pipeline): see README, Speed.
CONFIG_FLAGS += [
    ("--cache-features", "train", "cache_features", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="compute frozen encoders' features once (cached, keyed by encoder, weights, "
             "preprocessing and data) and train the rest on them (default: on when an "
             "encoder is frozen)")),
    ("--cache-dir", "train", "cache_dir", dict(metavar="DIR",
                                               help="feature cache folder, shared by runs (default: RUN/feature_cache)")),
    ("--mixed-precision", "train", "mixed_precision", dict(
        choices=config.PRECISIONS,
        help="16-bit compute with float32 weights and outputs")),
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
             "every epoch's end, see README, Speed)")),
]

# Quality options (issue: presets, imbalance, calibration, augmentation): see README, Getting the best accuracy.
CONFIG_FLAGS += [
    ("--preset", "train", "preset", dict(
        choices=config.PRESETS, help="a named recipe for the options not given: fast (frozen encoders, "
                                     "cached features, a head), balanced (5 fast heads averaged, then the "
                                     "text encoder's top 2 layers fine-tuned with them on the cached image "
                                     "features), best (stage 2 through both encoders, deeper, longer, "
                                     "augmented); none: every option at its own default; "
                                     "flags given win; see README, Getting the best accuracy "
                                     "(default: none)")),
    ("--loss", "train", "loss", dict(choices=config.LOSSES,
                                     help="auto: the task's loss; focal: focal cross-entropy (imbalance)")),
    ("--focal-gamma", "train", "focal_gamma", dict(type=float, metavar="X",
                                                   help="focusing parameter of --loss focal")),
    ("--class-weight", "train", "class_weight", dict(
        choices=config.CLASS_WEIGHTS, help="balanced: weight each class by n / (classes x count)")),
    ("--calibrate", "train", "calibrate", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="fit a temperature on the validation data after training and apply it to the scores "
             "(classification, binary, matching; default: on)")),
    ("--augment", "model", "augment", dict(
        choices=config.AUGMENTS, help="random image augmentation while training (none, light, strong)")),
    ("--encoder", "model", "encoder", dict(
        metavar="clip:SPEC|siglip:SPEC", help="one KerasHub dual encoder (CLIP, SigLIP) for both branches, "
                                              "preset name or folder; replaces --image-encoder/--text-encoder")),
]

# Two-stage training (tfmm.training.stages), set by the presets balanced and best.
CONFIG_FLAGS += [
    ("--two-stage", "train", "two_stage", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="train the head alone on cached frozen features first (RUN/stage1), then fine-tune this "
             "run's model from it (default: set by --preset; on for balanced and best)")),
    ("--head-seeds", "train", "head_seeds", dict(
        type=int, metavar="N", help="two stages: train stage 1 with N seeds and fine-tune the one with "
                                    "the lowest validation loss (default: set by --preset: 1)")),
    ("--feature-views", "train", "feature_views", dict(
        type=int, metavar="N", help="with a frozen, cached image encoder: also train on the image features of "
                                    "N augmented copies of each training image, computed once and cached "
                                    "(--augment's layers, light when none; default: set by --preset; "
                                    "balanced/best: 4, else 0)")),
]

# The flags that say how a source is read, for the commands that read data without training.
READ_FLAGS = ("--data-format", "--label-depth", "--text-from", "--image-col", "--text-col", "--label-col")
CHECK_FLAGS = ("--max-image-pixels", "--allow-outside-root")


def add_config_flags(p, flags) -> None:
    """Adds the ``CONFIG_FLAGS`` entries named in ``flags`` to the subparser ``p``."""
    for flag, section, field, kwargs in (f for f in CONFIG_FLAGS if f[0] in flags):
        p.add_argument(flag, **_with_default(section, field, kwargs))


def read_flags(args) -> dict:
    """``{DataConfig field: value}`` of the reading and checking flags given on the command line."""
    names = [f[2] for f in CONFIG_FLAGS if f[0] in READ_FLAGS + CHECK_FLAGS + ("--skip-bad-rows",)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def config_from_args(args):
    """The run config: ``--config`` file (or defaults), then every flag that was given."""
    from tfmm.config import RunConfig, load_config

    config = load_config(args.config) if args.config else RunConfig()
    sections = {}
    for flag, section, field, _ in CONFIG_FLAGS:
        value = getattr(args, field)
        if value is not None:
            sections.setdefault(section, {})[field] = value
    return config.replace(**sections)
