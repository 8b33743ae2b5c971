"""Matching, multilabel and contrastive: heads, losses, thresholds and metrics (feature level).

The first test is the reason the matching head looks the way it does: on pairs whose label
depends on the (image, caption) pair alone, the additive ``concat -> Dense`` head stays at
chance, while the interaction head learns the task.
"""

import json

import keras
import numpy as np
import pytest
from sklearn import metrics as skm

from tfmm.config import RunConfig
from tfmm.data import pairs
from tfmm.data.manifest import Manifest, encode_labels
from tfmm.models import heads, pair_heads
from tfmm.models.build import build_fusion_head
from tfmm.tasks import contrastive
from tfmm.tasks.metrics import matching_metrics, multilabel_metrics, roc_auc
from tfmm.tasks.thresholds import (
    load_thresholds, save_thresholds, serving_outputs, tune_and_save, tune_thresholds,
)

FEATURES = {"image_features": 16, "text_features": 16}


def colour_pairs(n, *, seed, colours=4, dim=16, noise=0.3):
    """Image features of a colour patch, text features of a colour word; label: same colour.

    Each image colour and each caption colour is matched half of the time, so neither input
    alone says anything about the label: only the pair does.
    """
    base = np.random.default_rng(1234)  # the same "encoders" for every split
    image_codes, text_codes = base.normal(size=(colours, dim)), base.normal(size=(colours, dim))
    rng = np.random.default_rng(seed)
    image_colour = rng.integers(colours, size=n)
    match = rng.random(n) < 0.5
    text_colour = np.where(match, image_colour, (image_colour + rng.integers(1, colours, size=n)) % colours)
    x = {"image_features": (image_codes[image_colour] + noise * rng.normal(size=(n, dim))).astype("float32"),
         "text_features": (text_codes[text_colour] + noise * rng.normal(size=(n, dim))).astype("float32")}
    return x, match.astype("float32")[:, None]


def _fit_head(task, hidden_dim, x, y, epochs=15):
    keras.utils.set_random_seed(0)
    cfg = RunConfig().replace(model={"task": task, "num_classes": 2, "projection_dim": 16,
                                     "hidden_dim": hidden_dim, "dropout": 0.0})
    head = build_fusion_head(cfg, FEATURES)
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss=heads.loss_for(task), metrics=["accuracy"])
    head.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return head


def test_additive_head_stays_at_chance_while_matching_head_learns_the_pair():
    x_train, y_train = colour_pairs(2000, seed=0)
    x_test, y_test = colour_pairs(1000, seed=1)
    # tfmm's classification head with concat fusion and no hidden layer: score = f(image) + g(text).
    additive = _fit_head("binary", 0, x_train, y_train)
    matching = _fit_head("matching", 32, x_train, y_train)
    additive_acc = additive.evaluate(x_test, y_test, verbose=0)[1]
    matching_acc = matching.evaluate(x_test, y_test, verbose=0)[1]
    assert 0.4 < additive_acc < 0.6, additive_acc
    assert matching_acc > 0.9, matching_acc
    assert matching.get_layer("match_score").activation is keras.activations.sigmoid


def test_pair_interaction_values_shapes_and_save_load(tmp_path):
    u = np.array([[1.0, -2.0]], "float32")
    v = np.array([[3.0, 1.0]], "float32")
    out = keras.ops.convert_to_numpy(pair_heads.PairInteraction()([u, v]))
    np.testing.assert_allclose(out, [[1, -2, 3, 1, 3, -2, 2, 3]])
    short = pair_heads.PairInteraction.from_config(pair_heads.PairInteraction(include_inputs=False).get_config())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(short([u, v])), [[3, -2, 2, 3]])
    with pytest.raises(ValueError, match=r"equal width; received widths \[2, 3\]"):
        pair_heads.PairInteraction()([keras.Input((2,)), keras.Input((3,))])
    cfg = RunConfig().replace(model={"task": "matching", "num_classes": 2, "projection_dim": 4, "hidden_dim": 4})
    head = build_fusion_head(cfg, FEATURES)
    path = str(tmp_path / "head.keras")
    head.save(path)
    x, _ = colour_pairs(5, seed=3)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), head.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="task 'matching' needs both modalities"):
        build_fusion_head(cfg, {"image_features": 16})


def test_pair_tasks_losses_units_and_errors():
    assert heads.output_units("matching", 2) == 1 and heads.output_units("contrastive", 0) == 0
    assert isinstance(heads.loss_for("matching"), keras.losses.BinaryCrossentropy)
    assert isinstance(heads.loss_for("contrastive"), pair_heads.ContrastiveLoss)
    assert {m.name for m in heads.metrics_for("matching", 2)} >= {"accuracy", "auc", "f1"}
    with pytest.raises(ValueError, match="task 'matching' needs the 2 labels 0 and 1; received 3"):
        heads.output_units("matching", 3)


def test_multilabel_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 5)) < 0.3).astype(int)
    y_pred = np.where(rng.random((200, 5)) < 0.8, y_true, 1 - y_true)
    y_pred[:, 4] = 0  # a label never predicted: precision 0 by convention
    labels = ["a", "b", "c", "d", "e"]
    got = multilabel_metrics(y_true, y_pred, labels)
    for average in ("micro", "macro", "weighted"):
        assert got[f"f1_{average}"] == pytest.approx(skm.f1_score(y_true, y_pred, average=average, zero_division=0))
        assert got[f"precision_{average}"] == pytest.approx(
            skm.precision_score(y_true, y_pred, average=average, zero_division=0))
        assert got[f"recall_{average}"] == pytest.approx(skm.recall_score(y_true, y_pred, average=average, zero_division=0))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(y_true, y_pred))
    report = skm.classification_report(y_true, y_pred, target_names=labels, output_dict=True, zero_division=0)
    for label in labels:
        for key in ("precision", "recall", "f1"):
            assert got["per_class"][label][key] == pytest.approx(report[label][key if key != "f1" else "f1-score"])
        assert got["per_class"][label]["support"] == report[label]["support"]
    np.testing.assert_array_equal(got["confusion_matrix"], skm.multilabel_confusion_matrix(y_true, y_pred))
    json.dumps(got)  # serializable as metrics.json


def test_matching_metrics_and_roc_auc_equal_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    scores = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 2)  # rounded: many ties
    got = matching_metrics(y, scores, threshold=0.45)
    pred = scores >= 0.45
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert got["n_positive"] == y.sum() and got["threshold"] == 0.45
    assert roc_auc([1, 1], [0.2, 0.9]) is None


def test_tuned_thresholds_maximize_f1_and_are_saved(tmp_path):
    rng = np.random.default_rng(2)
    y = (rng.random((150, 3)) < 0.4).astype(int)
    scores = np.clip(0.35 * y + 0.65 * rng.random((150, 3)), 0, 1)
    y[:, 2] = 0  # no positives: keeps 0.5
    thresholds = tune_thresholds(y, scores)
    for c in range(2):
        best = max(skm.f1_score(y[:, c], scores[:, c] >= t) for t in np.unique(scores[:, c]))
        assert skm.f1_score(y[:, c], scores[:, c] >= thresholds[c]) == pytest.approx(best)
        assert thresholds[c] not in scores[:, c]  # halfway between two scores
    assert thresholds[2] == 0.5
    np.testing.assert_allclose(tune_thresholds(np.array([[0], [1], [1]]), np.array([[0.2], [0.3], [0.9]])), [0.25])
    save_thresholds(str(tmp_path), ["x", "y", "z"], thresholds, tuned_on="validation data")
    np.testing.assert_allclose(load_thresholds(str(tmp_path), ["x", "y", "z"]), thresholds)
    # Without validation data the thresholds stay 0.5, and the file says so.
    assert list(tune_and_save(None, None, None, str(tmp_path), "matching", ["0", "1"])) == [0.5]
    assert json.load(open(tmp_path / "thresholds.json"))["tuned_on"] is None
    assert tune_and_save(None, None, None, str(tmp_path), "classification", ["a", "b"]) is None
    save_thresholds(str(tmp_path), ["x", "y", "z"], thresholds, tuned_on="validation data")
    with pytest.raises(ValueError, match=r"thresholds are for labels \['x', 'y', 'z'\]"):
        load_thresholds(str(tmp_path), ["x", "y"])
    np.testing.assert_allclose(load_thresholds(str(tmp_path / "none"), ["a", "b"]), [0.5, 0.5])


def _pairs_manifest(rows):
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.insert(0, "row", np.arange(len(frame)))
    return Manifest(frame, "pairs.csv", "/data")


def test_negatives_pair_images_with_other_captions_seeded():
    m = _pairs_manifest({"image": [f"/i{k}.png" for k in range(6)] + ["/i0.png"],
                         "text": ["red", "green", "blue", "red", "pink", "gray", "crimson"]})
    out = pairs.add_negatives(m, 2, seed=7)
    again = pairs.add_negatives(m, 2, seed=7)
    assert out.frame.equals(again.frame)
    assert not out.frame.equals(pairs.add_negatives(m, 2, seed=8).frame)
    negatives = out.frame[out.frame["label"] == "0"]
    assert len(out) == 7 + 14 and len(negatives) == 14
    positives = set(zip(m.frame["image"], m.frame["text"]))
    for rec in negatives.itertuples():
        assert (rec.image, rec.text) not in positives  # never a known positive (nor its own caption)
        assert m.frame["image"][rec.row] == rec.image  # row: where its image comes from
    assert (out.frame["label"][:7] == "1").all()
    with pytest.raises(ValueError, match="at least 2 distinct captions"):
        pairs.add_negatives(_pairs_manifest({"image": ["/a", "/b"], "text": ["x", "x"]}), 1)


def test_prepare_manifest_per_task():
    m = _pairs_manifest({"image": ["/a", "/b", "/c"], "text": ["x", "y", "z"]})
    cfg = RunConfig().replace(model={"task": "matching"}, data={"negatives": 1})
    assert not pairs.labels_required(cfg) and pairs.labels_required(RunConfig())
    assert len(pairs.prepare_manifest(m, cfg, seed=0)) == 6
    with pytest.raises(ValueError, match="needs a label column .* or --negatives N"):
        pairs.prepare_manifest(m, cfg.replace(data={"negatives": 0}), seed=0)
    with pytest.raises(ValueError, match="negatives only applies to task 'matching'"):
        pairs.prepare_manifest(m, cfg.replace(model={"task": "classification"}), seed=0)
    prepared = pairs.prepare_manifest(m, cfg.replace(model={"task": "contrastive"}, data={"negatives": 0}), seed=0)
    assert prepared.has_labels
    np.testing.assert_array_equal(encode_labels(prepared, [], "contrastive"), [[0, 0], [1, 1], [2, 2]])
    labeled = pairs.add_negatives(m, 0)
    np.testing.assert_array_equal(encode_labels(labeled, ["0", "1"], "matching"), [[1], [1], [1]])


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
    head = build_fusion_head(RunConfig().replace(model={"task": "contrastive", "projection_dim": 16}), FEATURES)
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss=heads.loss_for("contrastive"),
                 metrics=heads.metrics_for("contrastive", 0))

    def recall():
        image = contrastive.image_embedding_model(head).predict(x_test["image_features"], verbose=0)
        text = contrastive.text_embedding_model(head).predict(x_test["text_features"], verbose=0)
        np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
        return contrastive.retrieval_metrics(image, text, ids_test)

    before = recall()
    history = head.fit(x_train, ids_train, epochs=6, batch_size=64, verbose=0).history
    after = recall()
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert after["chance_recall@1"] == pytest.approx(0.01)
    for direction in ("image_to_text", "text_to_image"):
        assert after[f"{direction}_recall@1"] > 0.5 > 10 * before["chance_recall@1"]
        assert after[f"{direction}_recall@1"] > before[f"{direction}_recall@1"]
    assert contrastive.logit_scale(head) != pytest.approx(1 / 0.07)  # the temperature was learned


def test_recall_at_k_matches_brute_force_and_counts_duplicates():
    rng = np.random.default_rng(4)
    sim = rng.normal(size=(20, 20))
    relevant = np.eye(20, dtype=bool)
    got = contrastive.recall_at_k(sim, relevant, ks=(1, 5, 10))
    for k in (1, 5, 10):
        topk = np.argsort(-sim, axis=1)[:, :k]
        assert got[k] == pytest.approx(np.mean([i in topk[i] for i in range(20)]))
    # Two rows share a caption: for image 0 the caption of row 1 is a correct answer too.
    emb = np.eye(3, dtype="float32")
    text = emb[[1, 1, 2]]  # texts 0 and 1 are the same caption
    ids = np.array([[0, 0], [1, 0], [2, 2]], "float32")
    metrics = contrastive.retrieval_metrics(emb, text, ids)
    assert metrics["image_to_text_recall@1"] == 1.0 and metrics["text_to_image_recall@1"] == 1.0
    assert metrics["chance_recall@1"] == pytest.approx(5 / 9)


def test_zero_shot_prompts_and_scores():
    assert contrastive.zero_shot_prompts(["cat", " dog "], "a photo of a {}.") == ["a photo of a cat.", "a photo of a dog."]
    with pytest.raises(ValueError, match=r"prompt must contain '\{\}' once"):
        contrastive.zero_shot_prompts(["cat"], "a photo")
    with pytest.raises(ValueError, match="at least one label"):
        contrastive.zero_shot_prompts([" "])
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    prompts = np.array([[1.0, 0.0], [0.6, 0.8]])
    scores = contrastive.zero_shot_scores(image, prompts, scale=10.0)
    expected = np.exp(10 * image @ prompts.T)
    np.testing.assert_allclose(scores, expected / expected.sum(1, keepdims=True))


def test_serving_outputs_apply_the_thresholds():
    out = serving_outputs("matching", np.array([[0.2], [0.6]], "float32"), ["0", "1"], [0.5])
    assert out["match_score"].shape == (2,) and out["match"].numpy().tolist() == [False, True]
    scores = np.array([[0.9, 0.1, 0.4], [0.2, 0.8, 0.5]], "float32")
    out = serving_outputs("multilabel", scores, ["a", "b", "c"], [0.5, 0.5, 0.45])
    assert out["labels"].numpy().astype(str).tolist() == [["a", "b", "c"]] * 2
    assert out["predicted"].numpy().tolist() == [[True, False, False], [False, True, True]]
    np.testing.assert_allclose(out["scores"], scores)
    with pytest.raises(ValueError, match="received 'contrastive'"):
        serving_outputs("contrastive", scores, [], [])
