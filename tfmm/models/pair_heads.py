"""The fusion heads of the pair tasks: ``matching`` (interaction MLP) and ``contrastive``
(dual encoder), with their losses and ``fit`` metrics.

- ``matching``: does the caption describe the image? A ``concat -> Dense`` head scores
  ``f(image) + g(text)``, a sum with no term that depends on both, so the matching head
  feeds an MLP with *interaction features* of the two projected embeddings ``u`` and ``v``:
  ``[u, v, u * v, |u - v|]`` (:class:`PairInteraction`), and outputs one sigmoid ``match_score``.
- ``contrastive``: standardizes the image and text features (:func:`standardize_features`),
  projects them to ``projection_dim``, L2-normalizes each (``image_embedding``,
  ``text_embedding``) and outputs the ``[B, B]`` similarity logits of every image with every
  text of the batch, scaled by a learnable temperature (:class:`ContrastiveSimilarity`).
  :class:`ContrastiveLoss` is the symmetric in-batch cross-entropy over that matrix, as in CLIP.

The tasks that use them (losses' targets, metrics, thresholds, towers, retrieval, zero-shot)
are :mod:`tfmm.tasks.matching` and :mod:`tfmm.tasks.contrastive`.
"""

from __future__ import annotations

import math

import keras

from tfmm.models.heads import feature_dropout



@keras.saving.register_keras_serializable(package="tfmm")
class PairInteraction(keras.layers.Layer):
    """``[u, v] -> [u, v, u * v, |u - v|]``: features that depend on both members of a pair.

    ``u * v`` carries their agreement feature by feature (its sum is the dot product) and
    ``|u - v|`` their distance, so a linear layer on top can already score similarity,
    which no function of the form ``f(u) + g(v)`` can.

    Args:
        include_inputs: also pass ``u`` and ``v`` through (``D' = 4 D``; else ``2 D``).

    Raises:
        ValueError: ``u`` and ``v`` have different widths.

    Example:
        >>> layer = PairInteraction()
        >>> y = layer([keras.ops.ones((2, 8)), keras.ops.zeros((2, 8))])  # [2, 32]
    """

    def __init__(self, include_inputs: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.include_inputs = bool(include_inputs)

    def build(self, input_shape):
        u_shape, v_shape = input_shape
        if u_shape[-1] != v_shape[-1]:
            raise ValueError(
                f"PairInteraction needs inputs of equal width; received widths {[u_shape[-1], v_shape[-1]]}"
            )

    def call(self, inputs):
        u, v = inputs
        parts = [u, v] if self.include_inputs else []
        return keras.ops.concatenate(parts + [u * v, keras.ops.abs(u - v)], axis=-1)

    def compute_output_shape(self, input_shape):
        u_shape = input_shape[0]
        return (u_shape[0], u_shape[-1] * (4 if self.include_inputs else 2))

    def get_config(self):
        return {**super().get_config(), "include_inputs": self.include_inputs}


def build_matching_head(config, feature_dims: dict) -> keras.Model:
    """The ``fusion_head`` of a matching model: features -> ``[B, 1]`` match probability.

    Each modality's features are standardized
    (:func:`tfmm.models.pair_heads.standardize_features`), dropped out at ``feature_dropout``
    (training only, when > 0) and projected linearly to
    ``projection_dim`` (``image_projection``, ``text_projection``), then
    :class:`PairInteraction` -> dropout -> ``hidden_dim`` ReLU layer (when > 0) -> dropout
    -> ``match_score`` (sigmoid, float32).

    Raises:
        ValueError: the model does not use both modalities.
    """
    if set(feature_dims) != {"image_features", "text_features"}:
        raise ValueError(
            "task 'matching' needs both modalities (modalities='both'); received features "
            f"{sorted(feature_dims)}"
        )
    mc = config.model
    inputs = {name: keras.Input(shape=(d,), dtype="float32", name=name) for name, d in feature_dims.items()}
    u, v = (
        keras.layers.Dense(mc.projection_dim, name=f"{modality}_projection")(
            feature_dropout(standardize_features(inputs[f"{modality}_features"], modality), mc,
                            f"{modality}_features"))
        for modality in ("image", "text")
    )
    x = PairInteraction(name="interaction")([u, v])
    x = keras.layers.Dropout(mc.dropout, name="fusion_dropout")(x)
    if mc.hidden_dim:
        x = keras.layers.Dense(mc.hidden_dim, activation="relu", name="head_hidden")(x)
        x = keras.layers.Dropout(mc.dropout, name="head_dropout")(x)
    score = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="match_score")(x)
    return keras.Model(inputs, score, name="fusion_head")


@keras.saving.register_keras_serializable(package="tfmm")
class ContrastiveSimilarity(keras.layers.Layer):
    """Scaled similarity of every image embedding with every text embedding.

    ``logits[i, j] = exp(logit_scale) * <image_i, text_j>``; ``logit_scale`` is learned,
    starts at ``log(1 / temperature)`` and is capped at ``log(max_scale)`` (CLIP's
    safeguard against a collapsing temperature).

    Args:
        temperature: initial temperature (> 0).
        max_scale: largest allowed ``1 / temperature``.
        learnable: learn the temperature (``False`` keeps it fixed).

    Raises:
        ValueError: ``temperature`` or ``max_scale`` is not positive.

    Example:
        >>> sim = ContrastiveSimilarity(temperature=0.07)
        >>> logits = sim([keras.ops.eye(3), keras.ops.eye(3)])  # [3, 3], diagonal ~14.3
    """

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True, **kwargs):
        kwargs.setdefault("dtype", "float32")  # logits stay float32 under mixed precision
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; received {temperature!r}")
        if not max_scale > 0:
            raise ValueError(f"max_scale must be > 0; received {max_scale!r}")
        self.temperature = float(temperature)
        self.max_scale = float(max_scale)
        self.learnable = bool(learnable)

    def build(self, input_shape):
        self.logit_scale = self.add_weight(
            name="logit_scale", shape=(),
            initializer=keras.initializers.Constant(math.log(1.0 / self.temperature)),
            trainable=self.learnable,
        )

    def scale(self):
        """``1 / temperature`` as used in ``call`` (a scalar tensor)."""
        return keras.ops.exp(keras.ops.minimum(self.logit_scale, math.log(self.max_scale)))

    def call(self, inputs):
        image, text = inputs
        image = keras.ops.cast(image, self.compute_dtype)
        text = keras.ops.cast(text, self.compute_dtype)
        return self.scale() * keras.ops.matmul(image, keras.ops.transpose(text))

    def compute_output_shape(self, input_shape):
        image_shape, text_shape = input_shape
        return (image_shape[0], text_shape[0])

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature,
                "max_scale": self.max_scale, "learnable": self.learnable}


def _relevance(y_true):
    """``[B, B]`` float: 1 where rows share an image id or a caption id."""
    ops = keras.ops
    image_ids, text_ids = y_true[:, 0], y_true[:, 1]
    same_image = ops.equal(ops.expand_dims(image_ids, 1), ops.expand_dims(image_ids, 0))
    same_text = ops.equal(ops.expand_dims(text_ids, 1), ops.expand_dims(text_ids, 0))
    return ops.cast(ops.logical_or(same_image, same_text), "float32")


@keras.saving.register_keras_serializable(package="tfmm")
class ContrastiveLoss(keras.losses.Loss):
    """Symmetric in-batch cross-entropy over the ``[B, B]`` image-text logits.

    Row ``i`` of the logits is image ``i`` against every text of the batch; its target is
    text ``i`` (and any other text of the batch that is a positive for it); column ``j`` is
    text ``j`` against every image. The loss per example is the mean of the two
    directions. Targets are :func:`tfmm.data.labels.pair_ids`: ``[B, 2]`` (image id, caption id);
    rows sharing either id are positives of each other, so duplicate captions are not
    treated as negatives. With distinct pairs this is exactly CLIP's loss.

    Example:
        >>> loss = ContrastiveLoss()
        >>> value = loss(np.array([[0, 0], [1, 1]], "float32"), 10 * np.eye(2, dtype="float32"))
    """

    def __init__(self, name: str = "contrastive_loss", reduction: str = "sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        ops = keras.ops
        logits = ops.cast(y_pred, "float32")
        targets = _relevance(y_true)
        targets = targets / ops.sum(targets, axis=1, keepdims=True)  # symmetric: row = col sums
        image_to_text = -ops.sum(targets * ops.log_softmax(logits, axis=1), axis=1)
        text_to_image = -ops.sum(targets * ops.log_softmax(logits, axis=0), axis=0)
        return 0.5 * (image_to_text + text_to_image)


@keras.saving.register_keras_serializable(package="tfmm")
def in_batch_recall_at_1(y_true, y_pred):
    """Per image: 1.0 when its most similar text in the batch is a positive, else 0.0."""
    ops = keras.ops
    best = ops.argmax(y_pred, axis=1)
    hits = ops.take_along_axis(_relevance(y_true), ops.expand_dims(best, 1), axis=1)
    return ops.squeeze(hits, axis=1)


def standardize_features(features, modality: str):
    """Batch normalization of one modality's encoder features (``{modality}_features_norm``).

    Encoder features often share a large offset and differ little from one input to the
    next (a randomly initialized VGG16's pooled features: mean ~0.06, spread ~0.01 per
    unit). Products of such features are dominated by the offset, and a matching or
    contrastive head then learns slowly or not at all; standardizing each unit first
    (zero mean, unit variance, learned scale and shift) removes that.
    """
    return keras.layers.BatchNormalization(name=f"{modality}_features_norm")(features)


def build_dual_encoder_head(config, feature_dims: dict, *, temperature: float = 0.07) -> keras.Model:
    """The ``fusion_head`` of a contrastive model: features -> ``[B, B]`` logits.

    Args:
        config: the run config (``model.projection_dim`` is the embedding width).
        feature_dims: ``{"image_features": D_i, "text_features": D_t}``.
        temperature: the initial temperature of :class:`ContrastiveSimilarity`.

    Returns:
        A ``keras.Model`` named ``fusion_head`` with layers ``image_features_norm``,
        ``image_projection``, ``image_embedding``, the same three for ``text``, and
        ``similarity``.

    Raises:
        ValueError: the model does not use both modalities.
    """
    if set(feature_dims) != {"image_features", "text_features"}:
        raise ValueError(
            "task 'contrastive' needs both modalities (modalities='both'); received features "
            f"{sorted(feature_dims)}"
        )
    dim = config.model.projection_dim
    inputs = {name: keras.Input(shape=(d,), dtype="float32", name=name) for name, d in feature_dims.items()}
    embeddings = []
    for modality in ("image", "text"):
        x = standardize_features(inputs[f"{modality}_features"], modality)
        x = keras.layers.Dense(dim, name=f"{modality}_projection")(x)
        embeddings.append(keras.layers.UnitNormalization(name=f"{modality}_embedding", dtype="float32")(x))
    logits = ContrastiveSimilarity(temperature, name="similarity")(embeddings)
    return keras.Model(inputs, logits, name="fusion_head")
