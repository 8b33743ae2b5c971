"""``contrastive``: a dual encoder, one embedding space for images and texts (CLIP-style).

Every manifest row is a positive (image, caption) pair; the label column is optional and
unused. Targets are pair ids (:func:`tfmm.data.labels.pair_ids`: rows sharing an image or a
caption are positives of each other); the head is
:func:`tfmm.models.pair_heads.build_dual_encoder_head` and the loss the symmetric in-batch
cross-entropy (:class:`tfmm.models.pair_heads.ContrastiveLoss`). Evaluation is recall@k in
both directions (:mod:`tfmm.tasks.dual_encoder`); ``predict`` gives each row's similarity and
embeddings, or zero-shot labels (:mod:`tfmm.tasks.zero_shot`); the export serves the towers:
``similarity``, ``image_embedding``, ``text_embedding``, plus ``embed_image`` / ``embed_text``.

With a dual encoder (``--encoder clip:...`` / ``siglip:...``) the head keeps the model's own
embedding space, logit scale (and SigLIP's bias) and the loss is the model's own: CLIP's
softmax or SigLIP's sigmoid (:mod:`tfmm.models.dual_encoder_heads`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmm.data import pairs
from tfmm.data.images import decode_images
from tfmm.data.labels import PAIR_IDS, pair_ids
from tfmm.models import dual_encoder_heads, dual_encoders
from tfmm.models.pair_heads import ContrastiveLoss, build_dual_encoder_head, in_batch_recall_at_1
from tfmm.tasks.base import Evaluation, Task, pad_empty
from tfmm.tasks.dual_encoder import (
    image_embedding_model, logit_scale, pair_embedding_model, retrieval_metrics, text_embedding_model,
)
from tfmm.tasks.zero_shot import DEFAULT_PROMPT, zero_shot_predict


class ContrastiveTask(Task):
    """CLIP-style contrastive training of an image tower and a text tower."""

    name = "contrastive"
    encoding = PAIR_IDS
    fixed_labels = ()
    validation_summaries = False  # the model's output is an in-batch similarity matrix
    in_batch_negatives = True
    serving_output_names = ("similarity", "image_embedding", "text_embedding")

    def labels_required(self, config) -> bool:
        return False

    def prepare_manifest(self, manifest, config, *, seed: int):
        """Gives the manifest a (placeholder) label column, so the pipeline yields pair ids."""
        return pairs.with_empty_labels(super().prepare_manifest(manifest, config, seed=seed))

    def output_units(self, num_classes: int) -> int:
        return 0  # no classes

    def build_head(self, config, feature_dims: dict) -> keras.Model:
        if config.model.encoder:
            family = dual_encoders.parse_encoder_spec(config.model.encoder).family
            return dual_encoder_heads.build_pretrained_contrastive_head(feature_dims, family)
        return build_dual_encoder_head(config, feature_dims)

    def loss(self, config):
        if config.model.encoder:
            return dual_encoder_heads.contrastive_loss(dual_encoders.parse_encoder_spec(config.model.encoder).family)
        return ContrastiveLoss()

    def metrics(self, config) -> list:
        return [keras.metrics.MeanMetricWrapper(in_batch_recall_at_1, name="recall_at_1")]

    def embed_pairs(self, run, manifest) -> tuple:
        """``(image_embeddings [N, D], text_embeddings [N, D])`` of a manifest's rows."""
        model = pair_embedding_model(run.model)
        image_emb, text_emb = model.predict(run.dataset(manifest), verbose=0)
        return np.asarray(image_emb), np.asarray(text_emb)

    def evaluate(self, run, manifest) -> Evaluation:
        image_emb, text_emb = self.embed_pairs(run, manifest)
        metrics = retrieval_metrics(image_emb, text_emb, pair_ids(manifest.frame))
        return Evaluation({"task": self.name, **metrics, "temperature": 1.0 / logit_scale(run.model)})

    def evaluate_scores(self, run, manifest, scores) -> Evaluation:
        raise ValueError("task 'contrastive' is evaluated by retrieval over its embeddings; it has no "
                         "per-row scores to ablate (drop --ablate)")

    def summary(self, metrics: dict) -> str:
        lines = [f"retrieval over {metrics['n_examples']} pairs (chance recall@1 "
                 f"{metrics['chance_recall@1']:.4f}, temperature {metrics['temperature']:.4f}):"]
        ks = sorted(int(key.rsplit("@", 1)[1]) for key in metrics if key.startswith("image_to_text_recall@"))
        lines.append("".ljust(16) + "".join(f"recall@{k}".rjust(12) for k in ks))
        for direction in ("image_to_text", "text_to_image"):
            lines.append(direction.ljust(16) + "".join(f"{metrics[f'{direction}_recall@{k}']:.4f}".rjust(12) for k in ks))
        return "\n".join(lines)

    def prediction_values(self, run, manifest, *, k: int) -> list:
        image_emb, text_emb = self.embed_pairs(run, manifest)
        return [{"similarity": float(a @ b), "image_embedding": a.tolist(), "text_embedding": b.tolist()}
                for a, b in zip(image_emb, text_emb)]

    def zero_shot(self, run, data, labels, *, prompt, k: int) -> list:
        return zero_shot_predict(run, data, labels, prompt=prompt or DEFAULT_PROMPT, k=k)

    def serving_outputs(self, run):
        image_tower, text_tower = image_embedding_model(run.model), text_embedding_model(run.model)

        def outputs(features: dict) -> dict:
            a = image_tower(features["image"], training=False)
            b = text_tower({key: v for key, v in features.items() if key != "image"}, training=False)
            return {"similarity": tf.reduce_sum(a * b, axis=1), "image_embedding": a, "text_embedding": b}

        outputs.image_tower, outputs.text_tower = image_tower, text_tower
        return outputs

    def serving_endpoints(self, run, outputs) -> dict:
        """``embed_image`` (``image_bytes``) and ``embed_text`` (``text``): vectors for an ANN index."""
        size, max_pixels = run.config.data.image_size, run.config.data.max_image_pixels

        def embed_image(image_bytes):
            n = tf.size(image_bytes)
            images = pad_empty(decode_images(image_bytes, size, max_pixels), 0.0)
            return {"embedding": outputs.image_tower(images, training=False)[:n]}

        def embed_text(text):
            n = tf.size(text)
            tokens = run.preprocessor(pad_empty(text, ""))
            return {"embedding": outputs.text_tower(tokens, training=False)[:n]}

        return {
            "embed_image": (embed_image, [tf.TensorSpec([None], tf.string, name="image_bytes")]),
            "embed_text": (embed_text, [tf.TensorSpec([None], tf.string, name="text")]),
        }
