"""Run configuration: frozen dataclasses, validated on creation, saved as YAML.

A run directory's ``config.yaml`` holds a :class:`RunConfig` (data, model and
training sections); it is everything needed to rebuild the model and its input
pipeline from that folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import yaml

from tfmm.files import atomic_write

FUSIONS = ("concat", "sum", "mean", "gated")
MODALITIES = ("both", "image", "text")
POOLINGS = ("cls", "mean", "last")
TEXT_DTYPES = ("float32", "bfloat16", "float16")
DATA_FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet", "class_folders", "imagefolder", "coco", "tfrecords")
TEXT_SOURCES = ("sidecar", "filename")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
AUGMENTS = ("none", "light", "strong")
PRESETS = ("none", "fast", "balanced", "best")
LOSSES = ("auto", "focal")
CLASS_WEIGHTS = ("none", "balanced")


def _check_choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}; received {value!r}")


def _check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}; received {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How manifests are read and turned into model inputs.

    Args:
        image_col: manifest column holding the image path (relative to the manifest).
        text_col: manifest column holding the caption.
        label_col: manifest column holding the label (``|``-separated for multilabel).
        image_size: images are resized to ``image_size x image_size``.
        sequence_length: token sequence length for the text encoder.
        skip_bad_rows: skip invalid rows (reported and saved) instead of stopping.
        max_image_pixels: refuse images whose header claims more pixels than this.
        allow_outside_root: accept image paths that resolve outside the manifest's folder.
        negatives: task ``matching``: for each positive row, add this many negative rows
            pairing its image with captions of other rows (seeded; see :mod:`tfmm.data.pairs`).
        cache_in_memory: keep decoded images in memory after the first epoch
            (``tf.data`` ``cache()``); ``None`` (auto) caches when they fit in
            ``tfmm.data.pipeline.AUTO_CACHE_BYTES``.
        deterministic: ``False`` lets parallel decoding hand out elements as soon as they
            are ready (faster, but the order of a seeded shuffle is no longer reproducible).
        tf_data_autotune: run tf.data's background autotuner. Off by default: in TF 2.21,
            deleting an iterator (Keras does at every epoch) can block until the autotuner's
            current wait ends (its period doubles up to a minute); without it, ``AUTOTUNE``
            parallelism is the number of cores and prefetch buffers still grow on demand.
        data_format: how ``--data`` is read (one of ``DATA_FORMATS``); ``auto`` decides from
            what the path points at (see :mod:`tfmm.data.readers`); a named format settles
            the ambiguous cases (a ``.json`` file, a ``.txt`` table, a folder with both class
            folders and a metadata file). It applies to every source the config reads.
        label_depth: class folders (and an imagefolder without a label column): the label is
            made of this many folder levels above each image, ``/``-joined (``animals/cats``).
        text_from: class folders: the caption is the image's sidecar ``<stem>.txt``, its
            non-empty lines joined by spaces (``sidecar``), or the image's file name with
            ``_``/``-`` as spaces (``filename``).
    """

    image_col: str = "image"
    text_col: str = "text"
    label_col: str = "label"
    image_size: int = 224
    sequence_length: int = 64
    skip_bad_rows: bool = False
    max_image_pixels: int = 40_000_000
    allow_outside_root: bool = False
    negatives: int = 0
    cache_in_memory: Optional[bool] = None
    deterministic: bool = True
    tf_data_autotune: bool = False
    data_format: str = "auto"
    label_depth: int = 1
    text_from: str = "sidecar"

    def __post_init__(self):
        _check_choice("data_format", self.data_format, DATA_FORMATS)
        _check_choice("text_from", self.text_from, TEXT_SOURCES)
        _check_positive("label_depth", self.label_depth)
        _check_positive("negatives", self.negatives, allow_zero=True)
        _check_positive("image_size", self.image_size)
        _check_positive("sequence_length", self.sequence_length)
        _check_positive("max_image_pixels", self.max_image_pixels)
        if self.sequence_length < 3:
            raise ValueError(
                f"sequence_length must be >= 3 ([CLS], a token, [SEP]); received {self.sequence_length}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The fused model's architecture.

    Args:
        task: a name in ``tfmm.tasks.TASKS`` (checked when the task is looked up).
        text_encoder: ``minilm``, ``keras_hub:PRESET_OR_DIR`` (any KerasHub text backbone;
            ``keras_nlp:`` is an alias), ``tfhub:PREPROCESS_HANDLE,ENCODER_HANDLE`` or
            ``embedding-bag`` (hashed words and character trigrams, trained from scratch).
        text_pooling: ``cls`` (the pooled [CLS] output), ``mean`` (masked mean of tokens) or
            ``last`` (the last non-padding token: decoder backbones).
        text_dtype: compute dtype of the text backbone (``bfloat16``/``float16`` halve a
            large frozen backbone's memory).
        text_lora_rank: > 0 enables LoRA of this rank on the text backbone
            (``backbone.enable_lora``): only the low-rank adapters train.
        image_encoder: a ``keras.applications`` model name (``vgg16``, ``resnet50``, ...),
            ``efficientnet_lite0``/``1``/``2`` (offline ImageNet weights) or
            ``keras_hub:PRESET_OR_DIR`` (any KerasHub image backbone).
        image_weights: ``imagenet``, ``none`` or a path to a local weights file.
        fusion: one of ``FUSIONS``.
        modalities: ``both``, ``image`` or ``text`` (single-modality baselines).
        projection_dim: each branch is projected to this width before fusion.
        hidden_dim: width of the head's hidden layer (0 for none).
        dropout: dropout rate after fusion.
        feature_dropout: dropout rate on each branch's encoder features, before its projection
            (training only; classification, binary, multilabel and matching heads). ``None``: the
            preset decides (``fast``, ``balanced``, ``best``: 0.2; ``none``: 0).
        head_ensemble: ``N`` > 1 builds N copies of the head (``fusion_head/member_1..N``, each its
            own initialisation) and averages their scores. Under ``train.two_stage`` each member
            is trained alone in stage 1 (one run per seed) before stage 2 fine-tunes the average.
            ``None``: the preset decides (``balanced``, ``best``: 5; else 1).
        freeze_image / freeze_text: keep that encoder's weights fixed (and run it in
            inference mode: no dropout, BatchNorm on its moving statistics). ``None``: the
            preset decides (``train.preset``, see :mod:`tfmm.training.presets`; ``none``: off).
        unfreeze_image_blocks / unfreeze_text_layers: > 0 trains only the top N blocks of
            the image encoder / layers of the text encoder; the rest stays frozen. ``None``:
            the preset decides (``none``: 0).
        augment: random image augmentation in training only (``none``, ``light``,
            ``strong``: Keras preprocessing layers in the image branch; exported graphs and
            inference are unaffected).
        encoder: ``clip:PRESET_OR_DIR`` or ``siglip:PRESET_OR_DIR``: one KerasHub dual
            encoder provides both branches (its towers and its own preprocessing);
            ``text_encoder``/``image_encoder`` are then not used. Empty: separate encoders.
        num_classes: set from the label vocabulary when training starts.
    """

    task: str = "classification"
    text_encoder: str = "minilm"
    text_pooling: str = "mean"
    text_dtype: str = "float32"
    text_lora_rank: int = 0
    image_encoder: str = "vgg16"
    image_weights: str = "imagenet"
    fusion: str = "concat"
    modalities: str = "both"
    projection_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.2
    feature_dropout: Optional[float] = None
    head_ensemble: Optional[int] = None
    freeze_image: Optional[bool] = None
    freeze_text: Optional[bool] = None
    unfreeze_image_blocks: Optional[int] = None
    unfreeze_text_layers: Optional[int] = None
    augment: str = "none"
    encoder: str = ""
    num_classes: int = 0

    def __post_init__(self):
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("modalities", self.modalities, MODALITIES)
        _check_choice("text_pooling", self.text_pooling, POOLINGS)
        _check_choice("text_dtype", self.text_dtype, TEXT_DTYPES)
        _check_choice("augment", self.augment, AUGMENTS)
        _check_positive("text_lora_rank", self.text_lora_rank, allow_zero=True)
        for name in ("unfreeze_image_blocks", "unfreeze_text_layers"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name), allow_zero=True)
        _check_positive("projection_dim", self.projection_dim)
        _check_positive("hidden_dim", self.hidden_dim, allow_zero=True)
        _check_positive("num_classes", self.num_classes, allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); received {self.dropout!r}")
        if self.feature_dropout is not None and not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1); received {self.feature_dropout!r}")
        if self.head_ensemble is not None:
            _check_positive("head_ensemble", self.head_ensemble)
        if not self.text_encoder:
            raise ValueError("text_encoder must not be empty; received ''")
        if not self.image_encoder:
            raise ValueError("image_encoder must not be empty; received ''")

    @property
    def uses_image(self) -> bool:
        return self.modalities in ("both", "image")

    @property
    def uses_text(self) -> bool:
        return self.modalities in ("both", "text")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the model is fit.

    Args:
        epochs: number of passes over the training data (``None``: 10, or 50 when only a
            head trains on cached features, where epochs take milliseconds; early stopping
            on the validation loss ends such runs when they stop improving).
        batch_size: examples per replica per step (global batch = this x replicas).
        learning_rate: peak learning rate of AdamW (``None``: 1e-3 when every used encoder is
            frozen and only a fresh head learns, else the fine-tuning rate 1e-4; the value used
            is written into the run's ``config.yaml``).
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps spent warming the learning rate up from 0.
        early_stopping_patience: epochs without val improvement before stopping (0: off).
        strategy: ``auto``, ``one_device``, ``mirrored`` or ``multi_worker``.
        seed: seeds shuffling, initialisation and dropout.
        shuffle_buffer: tf.data shuffle buffer size.
        devices: devices for ``mirrored`` (or ``one_device``), comma-separated, e.g.
            ``"GPU:0,GPU:1"``; empty: all GPUs.
        scale_learning_rate: multiply ``learning_rate`` by the number of replicas (the
            linear scaling rule for a global batch that grows with replicas).
        save_every: also back up the training state every N steps (0: at epoch ends only),
            for resuming long epochs after a crash.
        cache_features: compute frozen encoders' outputs once and train the rest on them
            (``None``: on when an encoder is frozen; see :mod:`tfmm.training.feature_cache`).
        cache_dir: where feature caches go (empty: ``RUN/feature_cache``).
        mixed_precision: ``none``, ``mixed_float16`` or ``mixed_bfloat16``.
        jit_compile: compile train steps with XLA (``None``: Keras' ``"auto"``).
        encoder_lr_scale: the encoders' weights train at ``learning_rate x`` this; the
            head at ``learning_rate``. ``None``: the preset decides (``balanced``: 0.2; else 0.1).
        preset: a named recipe (one of ``PRESETS``) that fills in the options left to ``None``
            (see :mod:`tfmm.training.presets`); ``none``: every option at its own default.
        loss: ``auto`` (the task's loss) or ``focal`` (focal cross-entropy, for imbalance).
        focal_gamma: the focusing parameter of ``loss: focal``.
        class_weight: ``balanced`` weights each class by ``n / (k x count)`` in the loss.
        calibrate: fit a softmax/sigmoid temperature on the validation data after training
            (classification, binary, matching) and apply it in evaluate, predict and export.
        two_stage: first train the head alone on cached frozen features (``RUN/stage1``, until
            validation stops improving), then fine-tune the model this config describes starting
            from that head (see :mod:`tfmm.training.stages`). ``None``: the preset decides
            (``balanced``, ``best``: on).
        head_seeds: ``two_stage``: train stage 1 with this many seeds (``seed``, ``seed + 1``,
            ...) and fine-tune the one with the best validation loss (``None``: the preset
            decides: 1). With ``model.head_ensemble`` > 1 stage 1 trains one run per member
            instead (head_seeds must then be 1). Stage 2 keeps its starting weights when none of
            its epochs improves the validation loss on them.
        feature_views: with the image encoder frozen and cached, also cache its features of
            this many randomly augmented copies of each training image (made by
            ``model.augment``'s layers, ``light`` when it is ``none``; seeded, so every run and
            stage-1 member shares them) and train on the originals and the copies (a text
            encoder that trains reads each caption once per copy). ``None``: the preset decides
            (``balanced``, ``best``: 4; else 0).
    """

    epochs: Optional[int] = None
    batch_size: int = 32
    learning_rate: Optional[float] = None
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    early_stopping_patience: int = 3
    strategy: str = "auto"
    seed: int = 42
    shuffle_buffer: int = 2048
    devices: str = ""
    scale_learning_rate: bool = False
    save_every: int = 0
    cache_features: Optional[bool] = None
    cache_dir: str = ""
    mixed_precision: str = "none"
    jit_compile: Optional[bool] = None
    encoder_lr_scale: Optional[float] = None
    preset: str = "none"
    loss: str = "auto"
    focal_gamma: float = 2.0
    class_weight: str = "none"
    calibrate: bool = True
    two_stage: Optional[bool] = None
    head_seeds: Optional[int] = None
    feature_views: Optional[int] = None

    def __post_init__(self):
        if self.epochs is not None:
            _check_positive("epochs", self.epochs)
        _check_positive("batch_size", self.batch_size)
        if self.learning_rate is not None:
            _check_positive("learning_rate", self.learning_rate)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("early_stopping_patience", self.early_stopping_patience, allow_zero=True)
        _check_positive("shuffle_buffer", self.shuffle_buffer)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_positive("save_every", self.save_every, allow_zero=True)
        if self.encoder_lr_scale is not None:
            _check_positive("encoder_lr_scale", self.encoder_lr_scale)
        _check_choice("preset", self.preset, PRESETS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_positive("focal_gamma", self.focal_gamma, allow_zero=True)
        if self.head_seeds is not None:
            _check_positive("head_seeds", self.head_seeds)
        if self.feature_views is not None:
            _check_positive("feature_views", self.feature_views, allow_zero=True)
        if isinstance(self.devices, (list, tuple)):  # YAML list -> the flag's string form
            object.__setattr__(self, "devices", ",".join(str(d).strip() for d in self.devices))
        if not isinstance(self.devices, str) or (self.devices and not all(d.strip() for d in self.devices.split(","))):
            raise ValueError(f"devices must be a comma-separated string like 'GPU:0,GPU:1'; received {self.devices!r}")
        _check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1); received {self.warmup_fraction!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: data, model and training sections."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def replace(self, **sections) -> "RunConfig":
        """Returns a copy with some fields of some sections replaced.

        Example:
            ``cfg.replace(model={"fusion": "sum"}, train={"epochs": 2})``
        """
        updates = {}
        for section, fields in sections.items():
            if section not in ("data", "model", "train"):
                raise ValueError(f"unknown config section {section!r}; allowed: data, model, train")
            updates[section] = _replace_section(getattr(self, section), fields, section)
        return dataclasses.replace(self, **updates)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "RunConfig":
        d = d or {}
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise ValueError(
                f"unknown config section(s) {sorted(unknown)}; allowed: ['data', 'model', 'train']"
            )
        return cls().replace(**{k: v for k, v in d.items() if v})


def _replace_section(section, fields: dict, name: str):
    if isinstance(fields, type(section)):
        return fields
    if not isinstance(fields, dict):
        raise ValueError(f"config section {name!r} must be a mapping; received {fields!r}")
    allowed = {f.name for f in dataclasses.fields(section)}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(
            f"unknown {name} option(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return dataclasses.replace(section, **fields)


def load_config(path: str) -> RunConfig:
    """Reads a RunConfig from a YAML or JSON file (``safe_load``: no code is run).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a mapping or holds unknown options.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        d = json.loads(text)
    else:
        d = yaml.safe_load(text)
    if d is not None and not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a mapping; received {type(d).__name__}")
    try:
        return RunConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def save_config(config: RunConfig, path: str) -> None:
    """Writes ``config`` as YAML (atomically: temp file + rename)."""
    with atomic_write(path) as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
