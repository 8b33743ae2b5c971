"""The contrastive task: CLIP loss, scaled similarity, training, retrieval and zero-shot (feature level)."""

import keras
import numpy as np
import pytest

from tfmm.config import RunConfig
from tfmm.models import pair_heads
from tfmm.tasks import dual_encoder, get_task, zero_shot

FEATURES = {"image_features": 16, "text_features": 16}


def _clip_loss_reference(logits):
    """CLIP's loss on distinct pairs: mean of row-wise and column-wise cross-entropy."""
    def ce(z):
        z = z - z.max(axis=1, keepdims=True)
        return -(np.diag(z) - np.log(np.exp(z).sum(axis=1)))
    return float(np.mean(0.5 * (ce(logits) + ce(logits.T))))


def test_contrastive_loss_is_clip_loss_and_handles_duplicates():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 6)).astype("float32") * 3
    ids = np.stack([np.arange(6), np.arange(6)], 1).astype("float32")
    loss = pair_heads.ContrastiveLoss()
    assert float(loss(ids, logits)) == pytest.approx(_clip_loss_reference(logits), rel=1e-5)
    # Rows 0 and 1 share a caption: each may pick either text, so the target is split.
    dup = ids.copy()
    dup[1, 1] = 0
    perfect = np.full((6, 6), -30.0, "float32")
    np.fill_diagonal(perfect, 30.0)
    perfect[0, 1] = perfect[1, 0] = 30.0
    # Rows 0 and 1 each get target (1/2, 1/2) over texts 0 and 1 (and images 0 and 1): the
    # best possible loss there is the entropy log(2), reached by these logits.
    assert float(loss(dup, perfect)) == pytest.approx(2 * np.log(2) / 6, rel=1e-4)
    assert float(loss(dup, perfect)) < float(loss(dup, 60 * np.eye(6, dtype="float32") - 30))
    hits = keras.ops.convert_to_numpy(pair_heads.in_batch_recall_at_1(ids, np.eye(6, dtype="float32")))
    np.testing.assert_array_equal(hits, np.ones(6))
    restored = pair_heads.ContrastiveLoss.from_config(loss.get_config())
    assert float(restored(ids, logits)) == pytest.approx(float(loss(ids, logits)))


def test_contrastive_similarity_scales_caps_and_roundtrips(tmp_path):
    a = np.eye(3, dtype="float32")
    layer = pair_heads.ContrastiveSimilarity(temperature=0.1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([a, a])), 10 * np.eye(3), rtol=1e-5)
    capped = pair_heads.ContrastiveSimilarity(temperature=0.001, max_scale=50.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(capped([a, a]))[0, 0], 50.0, rtol=1e-5)
    assert [w.name for w in layer.trainable_weights] == ["logit_scale"]
    assert pair_heads.ContrastiveSimilarity(learnable=False).from_config(
        pair_heads.ContrastiveSimilarity(learnable=False).get_config()).learnable is False
    with pytest.raises(ValueError, match="temperature must be > 0; received 0"):
        pair_heads.ContrastiveSimilarity(temperature=0)
    i, t = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([i, t], pair_heads.ContrastiveSimilarity(0.5)([i, t]))
    model.save(str(tmp_path / "sim.keras"))
    loaded = keras.models.load_model(str(tmp_path / "sim.keras"))
    b = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(loaded([b, b[:2]]))
    assert got.shape == (4, 2)  # every image against every text
    np.testing.assert_allclose(got, 2 * b @ b[:2].T, rtol=1e-5)


def latent_pairs(n, *, seed, dim=16, latent=8, noise=0.1):
    """Image and text features that are two noisy linear views of one latent vector."""
    base = np.random.default_rng(99)
    a, b = base.normal(size=(latent, dim)), base.normal(size=(latent, dim))
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    x = {"image_features": (z @ a + noise * rng.normal(size=(n, dim))).astype("float32"),
         "text_features": (z @ b + noise * rng.normal(size=(n, dim))).astype("float32")}
    return x, np.stack([np.arange(n), np.arange(n)], 1).astype("float32")


def test_contrastive_training_lowers_loss_and_lifts_recall_above_chance():
    x_train, ids_train = latent_pairs(512, seed=0)
    x_test, ids_test = latent_pairs(100, seed=1)
    keras.utils.set_random_seed(0)
    cfg = RunConfig().replace(model={"task": "contrastive", "projection_dim": 16})
    task = get_task("contrastive")
    head = task.build_head(cfg, FEATURES)
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task.loss(cfg), metrics=task.metrics(cfg))

    def recall():
        image = dual_encoder.image_embedding_model(head).predict(x_test["image_features"], verbose=0)
        text = dual_encoder.text_embedding_model(head).predict(x_test["text_features"], verbose=0)
        np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
        return dual_encoder.retrieval_metrics(image, text, ids_test)

    before = recall()
    history = head.fit(x_train, ids_train, epochs=6, batch_size=64, verbose=0).history
    after = recall()
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert after["chance_recall@1"] == pytest.approx(0.01)
    for direction in ("image_to_text", "text_to_image"):
        assert after[f"{direction}_recall@1"] > 0.5 > 10 * before["chance_recall@1"]
        assert after[f"{direction}_recall@1"] > before[f"{direction}_recall@1"]
    assert dual_encoder.logit_scale(head) != pytest.approx(1 / 0.07)  # the temperature was learned


def test_recall_at_k_matches_brute_force_and_counts_duplicates():
    rng = np.random.default_rng(4)
    sim = rng.normal(size=(20, 20))
    relevant = np.eye(20, dtype=bool)
    got = dual_encoder.recall_at_k(sim, relevant, ks=(1, 5, 10))
    for k in (1, 5, 10):
        topk = np.argsort(-sim, axis=1)[:, :k]
        assert got[k] == pytest.approx(np.mean([i in topk[i] for i in range(20)]))
    # Two rows share a caption: for image 0 the caption of row 1 is a correct answer too.
    emb = np.eye(3, dtype="float32")
    text = emb[[1, 1, 2]]  # texts 0 and 1 are the same caption
    ids = np.array([[0, 0], [1, 0], [2, 2]], "float32")
    metrics = dual_encoder.retrieval_metrics(emb, text, ids)
    assert metrics["image_to_text_recall@1"] == 1.0 and metrics["text_to_image_recall@1"] == 1.0
    assert metrics["chance_recall@1"] == pytest.approx(5 / 9)


def test_zero_shot_prompts_and_scores():
    assert zero_shot.zero_shot_prompts(["cat", " dog "], "a photo of a {}.") == ["a photo of a cat.", "a photo of a dog."]
    with pytest.raises(ValueError, match=r"prompt must contain '\{\}' once"):
        zero_shot.zero_shot_prompts(["cat"], "a photo")
    with pytest.raises(ValueError, match="at least one label"):
        zero_shot.zero_shot_prompts([" "])
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    prompts = np.array([[1.0, 0.0], [0.6, 0.8]])
    scores = zero_shot.zero_shot_scores(image, prompts, scale=10.0)
    expected = np.exp(10 * image @ prompts.T)
    np.testing.assert_allclose(scores, expected / expected.sum(1, keepdims=True))
