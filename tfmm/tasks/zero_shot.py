"""Zero-shot classification with a contrastive run: label prompts, no classifier head.

Each label is put into a prompt (``"a photo of a {}"`` -> ``"a photo of a cat"``), the prompts
are embedded by the text tower and every image of a manifest is scored against them
(:func:`tfmm.tasks.zero_shot_scores`). ``tfmm predict --zero-shot-labels`` and
``tfmm.predict(..., zero_shot_labels=...)`` reach it through the run's task.

A pretrained CLIP / SigLIP needs no training at all: :func:`load_encoder_run` makes a
contrastive run of a preset name or folder (``tfmm predict --model clip:DIR --zero-shot-labels
...``), whose towers and logit scale are the model's own.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.data.labels import PAIR_IDS
from tfmm.data.manifest import Manifest, check_manifest, read_manifest
from tfmm.data.pipeline import make_dataset
from tfmm.data.validation import read_table
from tfmm.models import dual_encoders
from tfmm.run_dir import LoadedRun, load_run
from tfmm.tasks import dual_encoder
from tfmm.tasks.base import prediction_records
from tfmm.tasks.metrics import top_k

DEFAULT_PROMPT = "a photo of a {}"
_PLACEHOLDER_TEXT = "-"  # zero-shot: the manifest's captions are not used


def zero_shot_prompts(labels: Sequence[str], prompt: str = DEFAULT_PROMPT) -> list:
    """The texts a zero-shot classifier embeds: ``prompt`` with each label in its ``{}``.

    Raises:
        ValueError: no labels, or ``prompt`` has no ``{}`` placeholder.

    Example:
        >>> zero_shot_prompts(["cat", "dog"], "a photo of a {}")
        ['a photo of a cat', 'a photo of a dog']
    """
    labels = [str(x).strip() for x in labels if str(x).strip()]
    if not labels:
        raise ValueError("zero-shot classification needs at least one label; received none")
    if prompt.count("{}") != 1:
        raise ValueError(f"prompt must contain '{{}}' once, where the label goes; received {prompt!r}")
    return [prompt.replace("{}", label) for label in labels]


def zero_shot_scores(image_embeddings: np.ndarray, prompt_embeddings: np.ndarray, scale: float,
                     bias: Optional[float] = None) -> np.ndarray:
    """``[N, C]`` label scores from ``logits = scale * cosine (+ bias)``.

    Args:
        image_embeddings: ``[N, D]`` normalized image embeddings.
        prompt_embeddings: ``[C, D]`` normalized embeddings of the label prompts.
        scale: the model's ``1 / temperature`` (:func:`logit_scale`).
        bias: SigLIP's ``logit_bias``: each label gets its own ``sigmoid(logit)`` (the
            model's per-pair probability); ``None``: softmax over the labels (CLIP).
    """
    logits = scale * (np.asarray(image_embeddings) @ np.asarray(prompt_embeddings).T)
    if bias is not None:
        return 1.0 / (1.0 + np.exp(-(logits + bias)))
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def _image_manifest(run: LoadedRun, data) -> Manifest:
    """A manifest whose captions may be missing: zero-shot only reads its images."""
    if isinstance(data, Manifest):
        frame = data.frame.copy()
        frame["text"] = _PLACEHOLDER_TEXT
        return Manifest(frame, data.source, data.root)
    problems = []
    if isinstance(data, pd.DataFrame):
        df, source, root = data.copy(), "<DataFrame>", None
    else:
        if not os.path.isfile(str(data)):
            raise FileNotFoundError(f"manifest not found: {data}")
        (df, problems), source = read_table(str(data)), str(data)
        root = os.path.dirname(os.path.abspath(str(data)))
    df[run.config.data.text_col] = _PLACEHOLDER_TEXT
    manifest = read_manifest(df, run.config.data, root=root, require_labels=False)
    return Manifest(manifest.frame, source, manifest.root, problems)


def zero_shot_predict(run, data, labels: Sequence[str], *, prompt: str = DEFAULT_PROMPT,
                      k: int = 5) -> list:
    """Classifies the images of a manifest with a contrastive run and label prompts.

    Each label is put into ``prompt`` (``"a photo of a {}"`` -> ``"a photo of a cat"``), the
    prompts are embedded by the text tower and every image is scored against them:
    softmax over the labels of ``cosine / temperature`` (SigLIP: each label's sigmoid). The
    labels come out in the order of their prompts' cosine similarity. No classifier head is trained.

    Args:
        run: a contrastive run directory or :class:`~tfmm.run_dir.LoadedRun`, or a
            ``clip:PRESET_OR_DIR`` / ``siglip:PRESET_OR_DIR`` spec (:func:`load_encoder_run`).
        data: manifest (path, DataFrame or Manifest) with an image column; captions are
            not needed; a label column, when present, is reported as ``true_label``.
        labels: the candidate labels.
        prompt: the template, with ``{}`` where the label goes.
        k: how many labels per row.

    Returns:
        One dict per row: ``row``, ``labels`` and ``scores`` (top ``k``, descending),
        ``prompts`` (top ``k``, the texts that were matched) and ``true_label`` when known.

    Raises:
        ValueError: the run is not contrastive, no labels, or a prompt without ``{}``.
            (Callers go through the task: ``get_task(name).zero_shot`` raises for other tasks.)

    Example:
        >>> tfmm.predict("runs/clip", "photos.csv", zero_shot_labels=["cat", "dog"],
        ...              prompt="a photo of a {}")
    """
    run = as_run(run)
    prompts = zero_shot_prompts(labels, prompt)
    names = [str(x).strip() for x in labels if str(x).strip()]
    manifest = check_manifest(_image_manifest(run, data), encoding=PAIR_IDS,
                              skip_bad_rows=run.config.data.skip_bad_rows, config=run.config.data)
    images = make_dataset(manifest, config=run.config.data, modalities="image",
                          batch_size=run.config.train.batch_size)
    image_emb = dual_encoder.image_embedding_model(run.model).predict(images.map(lambda f: f["image"]), verbose=0)
    text_tower = dual_encoder.text_embedding_model(run.model)
    prompt_emb = np.asarray(text_tower(run.preprocessor(tf.constant(prompts)), training=False))
    scores = zero_shot_scores(image_emb, prompt_emb, dual_encoder.logit_scale(run.model),
                              dual_encoder.logit_bias(run.model))
    index = {name: i for i, name in enumerate(names)}
    values = [{"labels": top_names, "scores": top_scores, "prompts": [prompts[index[n]] for n in top_names]}
              for top_names, top_scores in top_k(scores, names, min(k, len(names)))]
    return prediction_records(manifest, values)


def as_run(run) -> LoadedRun:
    """``run`` as a :class:`LoadedRun`: itself, a run directory, or a dual encoder spec."""
    if isinstance(run, LoadedRun):
        return run
    if dual_encoders.is_encoder_spec(os.fspath(run)):
        return load_encoder_run(os.fspath(run))
    return load_run(run)


def load_encoder_run(spec: str, *, batch_size: int = 32) -> LoadedRun:
    """A pretrained CLIP / SigLIP as an (untrained) contrastive run: zero-shot and retrieval as they are.

    The run's model is the preset's two towers under a contrastive head whose logit scale
    (and SigLIP's bias) is the model's own; images are decoded at the vision tower's size and
    texts padded to the text tower's length, as the model was trained.

    Args:
        spec: ``clip:PRESET_OR_DIR`` or ``siglip:PRESET_OR_DIR``.
        batch_size: images per prediction batch.

    Returns:
        A :class:`LoadedRun` (``run_dir`` is the preset's source, no labels) for
        :func:`zero_shot_predict` and ``tfmm.predict``.

    Raises:
        ValueError: ``spec`` is not a dual encoder, or the preset cannot be loaded (the message
            names a local folder as the way out).

    Example:
        >>> run = load_encoder_run("clip:presets/clip_vit_base_patch32")
        >>> tfmm.predict(run, "photos.csv", zero_shot_labels=["cat", "dog"])
    """
    from tfmm.config import RunConfig
    from tfmm.models import dual_encoder_heads
    from tfmm.models.build import assemble_model

    parsed = dual_encoders.parse_encoder_spec(spec)
    sizes = dual_encoders.preset_tower_sizes(parsed)
    config = RunConfig().replace(model={"task": "contrastive", "encoder": spec, "modalities": "both"},
                                 data=sizes, train={"batch_size": batch_size})
    # The contrastive task's head for a dual encoder: the model's own similarity, scale (and bias).
    model = assemble_model(config, lambda _, dims: dual_encoder_heads.build_pretrained_contrastive_head(
        dims, parsed.family))
    preprocessor = dual_encoders.text_preprocessor(spec, sizes["sequence_length"])
    return LoadedRun(parsed.source, config, [], model, preprocessor)
