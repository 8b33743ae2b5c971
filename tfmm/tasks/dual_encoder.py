"""The towers of a trained dual encoder (contrastive task), and retrieval metrics.

``fusion_head`` of a ``contrastive`` model standardizes the image and text features, projects
them to ``projection_dim`` and L2-normalizes each (``image_embedding``, ``text_embedding``);
its ``similarity`` layer scales their dot products by a learned temperature. After training
the towers are used alone: :func:`image_embedding_model` and :func:`text_embedding_model` map
raw pixels / token ids to normalized vectors (retrieval, an ANN index, the export's
``embed_image``/``embed_text``), :func:`retrieval_metrics` gives recall@k in both directions.
"""

from __future__ import annotations

import logging
from typing import Sequence

import keras
import numpy as np

from tfmm.models import text as tftext

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)


def _tower(model: keras.Model, modality: str, name: str) -> keras.Model:
    """Input(s) of one modality -> encoder -> [standardize -> projection] -> L2 normalization.

    A CLIP / SigLIP head has no standardization or projection: its towers already share a space.
    """
    head = model.get_layer("fusion_head") if _has_layer(model, "fusion_head") else model
    names = (f"{modality}_features_norm", f"{modality}_projection", f"{modality}_embedding")
    steps = [head.get_layer(n) for n in names if _has_layer(head, n)]

    def embed(features):
        for layer in steps:
            features = layer(features)
        return features

    if not _has_layer(model, f"{modality}_encoder"):  # a bare fusion_head: features in
        width = int(head.get_layer(f"{modality}_features").output.shape[-1])
        inputs = keras.Input(shape=(width,), dtype="float32", name=f"{modality}_features")
        return keras.Model(inputs, embed(inputs), name=name)
    encoder = model.get_layer(f"{modality}_encoder")
    if modality == "image":
        inputs = keras.Input(shape=tuple(encoder.input.shape[1:]), dtype="float32", name="image")
    else:
        inputs = tftext.text_inputs(int(encoder.input["token_ids"].shape[1]))
    return keras.Model(inputs, embed(encoder(inputs)), name=name)


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _check_contrastive(model: keras.Model) -> None:
    head = model.get_layer("fusion_head") if _has_layer(model, "fusion_head") else model
    if not _has_layer(head, "similarity"):
        raise ValueError(
            f"model {model.name!r} is not a contrastive dual encoder (no 'similarity' layer); "
            "train one with task 'contrastive' (--task contrastive)"
        )


def image_embedding_model(model: keras.Model) -> keras.Model:
    """The image tower of a contrastive model: raw pixels -> L2-normalized embedding.

    The returned model shares its weights with ``model``.

    Args:
        model: a model built for task ``contrastive`` (or its bare ``fusion_head``, whose
            tower then starts from ``image_features``).

    Returns:
        ``keras.Model`` named ``image_embedding_model``: ``image`` (``[B, S, S, 3]`` float32
        in ``[0, 255]``) -> ``[B, projection_dim]`` float32 of unit L2 norm.

    Raises:
        ValueError: ``model`` is not a contrastive model.

    Example:
        >>> embed = image_embedding_model(tfmm.load_run("runs/clip").model)
        >>> vectors = embed.predict(images)  # images: [N, S, S, 3] in 0..255
    """
    _check_contrastive(model)
    return _tower(model, "image", "image_embedding_model")


def text_embedding_model(model: keras.Model) -> keras.Model:
    """The text tower of a contrastive model: token ids -> L2-normalized embedding.

    Args:
        model: a model built for task ``contrastive``.

    Returns:
        ``keras.Model`` named ``text_embedding_model``: ``{token_ids, segment_ids,
        padding_mask}`` (``[B, L]`` int32, the run's text preprocessor's output) ->
        ``[B, projection_dim]`` float32 of unit L2 norm.

    Raises:
        ValueError: ``model`` is not a contrastive model.

    Example:
        >>> run = tfmm.load_run("runs/clip")
        >>> vectors = text_embedding_model(run.model)(run.preprocessor(["a red circle"]))
    """
    _check_contrastive(model)
    return _tower(model, "text", "text_embedding_model")


def pair_embedding_model(model: keras.Model) -> keras.Model:
    """Both towers side by side: the model's input dict -> ``[image_embedding, text_embedding]``.

    For scoring a manifest of pairs in one pass (retrieval evaluation, predictions).

    Raises:
        ValueError: ``model`` is not a contrastive model with its encoders.
    """
    image_tower, text_tower = image_embedding_model(model), text_embedding_model(model)
    image = keras.Input(shape=tuple(image_tower.input.shape[1:]), dtype="float32", name="image")
    tokens = tftext.text_inputs(int(text_tower.input["token_ids"].shape[1]))
    return keras.Model({"image": image, **tokens}, [image_tower(image), text_tower(tokens)],
                       name="pair_embedding_model")


def logit_scale(model: keras.Model) -> float:
    """The trained ``1 / temperature`` of a contrastive model."""
    _check_contrastive(model)
    head = model.get_layer("fusion_head") if _has_layer(model, "fusion_head") else model
    return float(keras.ops.convert_to_numpy(head.get_layer("similarity").scale()))


def logit_bias(model: keras.Model):
    """The trained ``logit_bias`` of a SigLIP contrastive model (sigmoid scores); ``None`` for
    softmax models (CLIP, tfmm's own dual encoder)."""
    _check_contrastive(model)
    head = model.get_layer("fusion_head") if _has_layer(model, "fusion_head") else model
    similarity = head.get_layer("similarity")
    return float(keras.ops.convert_to_numpy(similarity.bias())) if hasattr(similarity, "bias") else None


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict:
    """Share of queries (rows) with a relevant item among their ``k`` most similar.

    Args:
        similarity: ``[Q, N]`` query-by-item similarities.
        relevant: ``[Q, N]`` bool, True where the item is a correct answer for the query.
        ks: the cut-offs.

    Returns:
        ``{k: recall}`` (``k`` larger than ``N`` counts all items).
    """
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), similarity.shape[1])  # rank of 1st hit
    return {int(k): float(np.mean(first < k)) for k in ks}


def retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray, ids: np.ndarray,
                      ks: Sequence[int] = RECALL_KS) -> dict:
    """Recall@k for image -> text and text -> image search over a set of pairs.

    Row ``i`` holds the ``i``-th pair's two embeddings; a text is a correct answer for an
    image (and the reverse) when the two rows share an image or a caption id.

    Args:
        image_embeddings: ``[N, D]`` normalized image embeddings.
        text_embeddings: ``[N, D]`` normalized text embeddings.
        ids: ``[N, 2]`` (image id, caption id), see :func:`tfmm.data.labels.pair_ids`.
        ks: the cut-offs.

    Returns:
        ``image_to_text_recall@K``, ``text_to_image_recall@K`` for each ``K``, their mean
        ``mean_recall``, ``chance_recall@1`` (the expected recall@1 of a random ranking)
        and ``n_examples``.
    """
    ids = np.asarray(ids)
    relevant = (ids[:, None, 0] == ids[None, :, 0]) | (ids[:, None, 1] == ids[None, :, 1])
    similarity = np.asarray(image_embeddings) @ np.asarray(text_embeddings).T
    out = {"n_examples": int(len(ids))}
    i2t = recall_at_k(similarity, relevant, ks)
    t2i = recall_at_k(similarity.T, relevant.T, ks)
    for k in ks:
        out[f"image_to_text_recall@{k}"] = i2t[k]
        out[f"text_to_image_recall@{k}"] = t2i[k]
    out["mean_recall"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
    out["chance_recall@1"] = float(relevant.mean()) if len(ids) else 0.0
    return out
