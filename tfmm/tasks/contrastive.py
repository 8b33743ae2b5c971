"""The contrastive dual encoder: one embedding space for images and texts.

``fusion_head`` of a ``contrastive`` model standardizes the image features and the text
features (:func:`standardize_features`), projects them to ``projection_dim``, L2-normalizes
each (``image_embedding``, ``text_embedding``), and outputs the ``[B, B]`` similarity logits of every image with every
text of the batch, scaled by a learnable temperature (:class:`ContrastiveSimilarity`).
:class:`ContrastiveLoss` is the symmetric in-batch cross-entropy over that matrix
(image -> text and text -> image), as in CLIP.

After training, the towers are used alone: :func:`image_embedding_model` and
:func:`text_embedding_model` map raw pixels / token ids to normalized vectors (retrieval,
an ANN index, the export's ``embed_image``/``embed_text``), :func:`retrieval_metrics` gives
recall@k in both directions and :func:`zero_shot_scores` classifies images against label
prompts with no classifier head.
"""

from __future__ import annotations

import logging
from typing import Sequence

import keras
import numpy as np

from tfmm.models import text as tftext

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "a photo of a {}"
RECALL_KS = (1, 5, 10)


def _tower(model: keras.Model, modality: str, name: str) -> keras.Model:
    """Input(s) of one modality -> encoder -> standardize -> projection -> L2 normalization."""
    head = model.get_layer("fusion_head") if _has_layer(model, "fusion_head") else model
    standardize = head.get_layer(f"{modality}_features_norm")
    projection = head.get_layer(f"{modality}_projection")
    normalize = head.get_layer(f"{modality}_embedding")

    def embed(features):
        return normalize(projection(standardize(features)))

    if not _has_layer(model, f"{modality}_encoder"):  # a bare fusion_head: features in
        inputs = keras.Input(shape=(projection.kernel.shape[0],), dtype="float32", name=f"{modality}_features")
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


def raw_embedding_fns(model: keras.Model, preprocessor, image_size: int) -> tuple:
    """``(embed_image, embed_text)``: raw inputs -> ``{"embedding": [B, D]}``, for serving.

    ``embed_image(image_bytes)`` takes a ``[B]`` string tensor of encoded JPEG/PNG/GIF/BMP
    images (decoded and resized by :func:`tfmm.data.images.decode_image`, as in training);
    ``embed_text(text)`` takes a ``[B]`` string tensor of captions (tokenized by the run's
    ``preprocessor``). Both return L2-normalized float32 vectors. Wrap each in a
    ``tf.function`` with a named ``tf.TensorSpec([None], tf.string)`` to export it as a
    signature (``embed_image`` / ``embed_text``).

    Args:
        model: a contrastive model.
        preprocessor: the run's text preprocessor (``LoadedRun.preprocessor``).
        image_size: the run's ``data.image_size``.

    Example:
        >>> embed_image, embed_text = raw_embedding_fns(run.model, run.preprocessor, 224)
        >>> vectors = embed_text(tf.constant(["a red shoe"]))["embedding"]
    """
    import tensorflow as tf

    from tfmm.data.images import decode_image

    image_tower, text_tower = image_embedding_model(model), text_embedding_model(model)

    def embed_image(image_bytes):
        images = tf.map_fn(lambda b: decode_image(b, image_size), image_bytes,
                           fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
        return {"embedding": image_tower(images, training=False)}

    def embed_text(text):
        return {"embedding": text_tower(preprocessor(text), training=False)}

    return embed_image, embed_text


def logit_scale(model: keras.Model) -> float:
    """The trained ``1 / temperature`` of a contrastive model."""
    _check_contrastive(model)
    head = model.get_layer("fusion_head") if _has_layer(model, "fusion_head") else model
    return float(keras.ops.convert_to_numpy(head.get_layer("similarity").scale()))


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
        ids: ``[N, 2]`` (image id, caption id), see :func:`tfmm.data.manifest.pair_ids`.
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


def zero_shot_scores(image_embeddings: np.ndarray, prompt_embeddings: np.ndarray, scale: float) -> np.ndarray:
    """``[N, C]`` class probabilities: softmax over labels of ``scale * cosine``.

    Args:
        image_embeddings: ``[N, D]`` normalized image embeddings.
        prompt_embeddings: ``[C, D]`` normalized embeddings of the label prompts.
        scale: the model's ``1 / temperature`` (:func:`logit_scale`).
    """
    logits = scale * (np.asarray(image_embeddings) @ np.asarray(prompt_embeddings).T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)
