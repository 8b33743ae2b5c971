"""The contrastive head and losses of a pretrained dual encoder (CLIP, SigLIP).

A CLIP or SigLIP backbone already maps images and texts into one embedding space; its
contrastive fine-tuning keeps that space: the ``fusion_head`` only L2-normalizes the two tower
outputs (``image_embedding``, ``text_embedding``; no fresh projection) and scores every image
with every text of the batch as the model itself does:

- CLIP: ``exp(logit_scale) * cosine`` (:class:`~tfmm.models.pair_heads.ContrastiveSimilarity`)
  with the symmetric softmax cross-entropy (:class:`~tfmm.models.pair_heads.ContrastiveLoss`);
- SigLIP: ``exp(logit_scale) * cosine + logit_bias`` (:class:`SigmoidSimilarity`) with the
  pairwise sigmoid loss (:class:`SigmoidContrastiveLoss`, KerasHub's ``SigLIPLoss``).

``logit_scale`` and ``logit_bias`` start from the backbone's own trained values
(:func:`tfmm.models.dual_encoders.copy_logit_parameters`).
"""

from __future__ import annotations

import keras

from tfmm.models.pair_heads import ContrastiveLoss, ContrastiveSimilarity, _relevance


@keras.saving.register_keras_serializable(package="tfmm")
class SigmoidSimilarity(ContrastiveSimilarity):
    """SigLIP's scores: ``exp(logit_scale) * <image_i, text_j> + logit_bias``.

    Args:
        temperature, max_scale, learnable: as :class:`~tfmm.models.pair_heads.ContrastiveSimilarity`.
        bias: the initial ``logit_bias`` (SigLIP starts training at -10).

    Example:
        >>> sim = SigmoidSimilarity(temperature=0.1, bias=-10.0)
        >>> logits = sim([keras.ops.eye(3), keras.ops.eye(3)])  # diagonal 0, elsewhere -10
    """

    def __init__(self, temperature: float = 0.1, max_scale: float = 1000.0, learnable: bool = True,
                 bias: float = -10.0, **kwargs):
        super().__init__(temperature=temperature, max_scale=max_scale, learnable=learnable, **kwargs)
        self.initial_bias = float(bias)

    def build(self, input_shape):
        super().build(input_shape)
        self.logit_bias = self.add_weight(
            name="logit_bias", shape=(), initializer=keras.initializers.Constant(self.initial_bias),
            trainable=self.learnable,
        )

    def bias(self):
        """``logit_bias`` as used in ``call`` (a scalar tensor)."""
        return keras.ops.convert_to_tensor(self.logit_bias)

    def call(self, inputs):
        return super().call(inputs) + self.logit_bias

    def get_config(self):
        return {**super().get_config(), "bias": self.initial_bias}


@keras.saving.register_keras_serializable(package="tfmm")
class SigmoidContrastiveLoss(keras.losses.Loss):
    """SigLIP's pairwise sigmoid loss over the ``[B, B]`` image-text logits.

    Every (image, text) cell of the batch is a binary decision: ``+1`` where the two are a
    pair (they share an image or a caption id, :func:`tfmm.data.labels.pair_ids`), ``-1``
    elsewhere; the loss of an image is ``-sum_j log_sigmoid(z_ij * logits_ij)``, as KerasHub's
    ``SigLIPLoss`` computes it.

    Example:
        >>> loss = SigmoidContrastiveLoss()
        >>> value = loss(np.array([[0, 0], [1, 1]], "float32"), 10 * np.eye(2, dtype="float32") - 5)
    """

    def __init__(self, name: str = "sigmoid_contrastive_loss", reduction: str = "sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        ops = keras.ops
        logits = ops.cast(y_pred, "float32")
        signs = 2.0 * _relevance(y_true) - 1.0
        return -ops.sum(ops.log_sigmoid(signs * logits), axis=-1)


def contrastive_loss(family: str) -> keras.losses.Loss:
    """The loss ``family`` was trained with: CLIP's softmax, SigLIP's sigmoid."""
    return SigmoidContrastiveLoss() if family == "siglip" else ContrastiveLoss()


def build_pretrained_contrastive_head(feature_dims: dict, family: str) -> keras.Model:
    """The ``fusion_head`` of a contrastive CLIP / SigLIP model: tower outputs -> ``[B, B]`` logits.

    Args:
        feature_dims: ``{"image_features": D, "text_features": D}`` (the towers' common width).
        family: ``clip`` (:class:`ContrastiveSimilarity`) or ``siglip`` (:class:`SigmoidSimilarity`).

    Returns:
        A ``keras.Model`` named ``fusion_head`` with layers ``image_embedding``,
        ``text_embedding`` (unit L2 norm) and ``similarity``.

    Raises:
        ValueError: not both modalities, or towers of different widths.
    """
    if set(feature_dims) != {"image_features", "text_features"}:
        raise ValueError("task 'contrastive' needs both modalities (modalities='both'); received features "
                         f"{sorted(feature_dims)}")
    if feature_dims["image_features"] != feature_dims["text_features"]:
        raise ValueError(f"the {family} towers give embeddings of different widths {feature_dims}; "
                         "a contrastive head compares them directly")
    inputs = {name: keras.Input(shape=(d,), dtype="float32", name=name) for name, d in feature_dims.items()}
    embeddings = [keras.layers.UnitNormalization(name=f"{modality}_embedding", dtype="float32")(
        inputs[f"{modality}_features"]) for modality in ("image", "text")]
    similarity = SigmoidSimilarity(name="similarity") if family == "siglip" else ContrastiveSimilarity(
        name="similarity")
    return keras.Model(inputs, similarity(embeddings), name="fusion_head")
