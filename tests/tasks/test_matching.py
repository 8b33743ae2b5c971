"""The matching task: its interaction head (and why), losses and label counts, negatives,
and the per-task preparation of manifests (feature level).

The first test is the reason the matching head looks the way it does: on pairs whose label
depends on the (image, caption) pair alone, the additive ``concat -> Dense`` head stays at
chance, while the interaction head learns the task.
"""

import keras
import numpy as np
import pytest

from tfmm.config import RunConfig
from tfmm.data import pairs
from tfmm.data.manifest import Manifest
from tfmm.models import pair_heads
from tfmm.tasks import get_task

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
    head = get_task(task).build_head(cfg, FEATURES)
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss=get_task(task).loss(cfg), metrics=["accuracy"])
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
    head = get_task("matching").build_head(cfg, FEATURES)
    path = str(tmp_path / "head.keras")
    head.save(path)
    x, _ = colour_pairs(5, seed=3)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), head.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="task 'matching' needs both modalities"):
        get_task("matching").build_head(cfg, {"image_features": 16})


def test_pair_tasks_losses_units_and_errors():
    matching, contrastive, cfg = get_task("matching"), get_task("contrastive"), RunConfig()
    assert matching.output_units(2) == 1 and contrastive.output_units(0) == 0
    assert isinstance(matching.loss(cfg), keras.losses.BinaryCrossentropy)
    assert isinstance(contrastive.loss(cfg), pair_heads.ContrastiveLoss)
    assert {m.name for m in matching.metrics(cfg)} >= {"accuracy", "auc", "f1"}
    with pytest.raises(ValueError, match="task 'matching' needs the 2 labels 0 and 1; received 3"):
        matching.output_units(3)
    with pytest.raises(ValueError, match="task 'binary' needs exactly 2 labels; received 3"):
        get_task("binary").output_units(3)
    with pytest.raises(ValueError, match="task must be one of .*received 'regression'"):
        get_task("regression")


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
    matching, contrastive = get_task("matching"), get_task("contrastive")
    assert not matching.labels_required(cfg) and matching.labels_required(RunConfig())
    assert get_task("classification").labels_required(cfg) and not contrastive.labels_required(RunConfig())
    assert len(matching.prepare_manifest(m, cfg, seed=0)) == 6
    with pytest.raises(ValueError, match="needs a label column .* or --negatives N"):
        matching.prepare_manifest(m, cfg.replace(data={"negatives": 0}), seed=0)
    with pytest.raises(ValueError, match="negatives only applies to task 'matching'"):
        get_task("classification").prepare_manifest(m, cfg, seed=0)
    prepared = contrastive.prepare_manifest(m, cfg.replace(data={"negatives": 0}), seed=0)
    assert prepared.has_labels
    np.testing.assert_array_equal(contrastive.encode_targets(prepared, []), [[0, 0], [1, 1], [2, 2]])
    labeled = pairs.add_negatives(m, 0)
    np.testing.assert_array_equal(matching.encode_targets(labeled, ["0", "1"]), [[1], [1], [1]])
    assert matching.label_vocab(labeled) == ["0", "1"] and contrastive.label_vocab(prepared) == []
