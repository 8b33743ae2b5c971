"""--loss focal and --class-weight balanced: the Keras losses and weights each task gets, and
minority recall on a deliberately imbalanced tiny set (90/10) against plain cross-entropy."""

import logging
import os

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tfmm
from tfmm.config import RunConfig
from tfmm.data.manifest import Manifest
from tfmm.tasks import get_task
from tfmm.training import losses
from tfmm.training.train import train

COMMON, RARE = ("red", "circle", "square", "photo"), ("green", "blue", "triangle", "picture")


def _focal(task):
    return losses.make_loss(get_task(task), RunConfig().replace(train={"loss": "focal", "focal_gamma": 3.0}))


def test_focal_loss_per_task():
    assert isinstance(_focal("classification"), keras.losses.CategoricalFocalCrossentropy)
    for task in ("binary", "multilabel", "matching"):
        assert isinstance(_focal(task), keras.losses.BinaryFocalCrossentropy), task
    assert _focal("binary").gamma == 3.0
    auto = losses.make_loss(get_task("classification"), RunConfig())
    assert type(auto) is keras.losses.CategoricalCrossentropy
    with pytest.raises(ValueError, match=r"--loss focal.*'contrastive'"):
        _focal("contrastive")
    # gamma 0 is plain cross-entropy on the task's own targets (one-hot; [N, 1] 0/1).
    y, p = np.eye(3)[[0, 2]], np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    zero = RunConfig().replace(train={"loss": "focal", "focal_gamma": 0.0})
    ce = float(keras.losses.CategoricalCrossentropy()(y, p))
    assert float(losses.make_loss(get_task("classification"), zero)(y, p)) == pytest.approx(0.25 * ce, rel=1e-5)
    yb, pb = np.array([[1.0], [0.0]]), np.array([[0.8], [0.3]])
    bce = float(keras.losses.BinaryCrossentropy()(yb, pb))
    assert float(losses.make_loss(get_task("binary"), zero)(yb, pb)) == pytest.approx(bce, rel=1e-5)


def _manifest(labels) -> Manifest:
    frame = pd.DataFrame({"row": range(len(labels)), "image": "", "text": "x", "label": labels})
    return Manifest(frame, "train.csv", ".")


def test_class_weights_per_task(caplog):
    balanced = RunConfig().replace(train={"class_weight": "balanced"})
    labels = ["a"] * 6 + ["b"] * 3 + ["c"] * 1
    with caplog.at_level(logging.INFO, logger="tfmm.training.losses"):
        weights = losses.class_weights(get_task("classification"), balanced, _manifest(labels), ["a", "b", "c"])
    assert weights == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})
    assert "c: 3.33 (1 rows)" in caplog.text
    # binary: [N, 1] 0/1 targets, which Keras rounds to the class id; labels[1] is class 1.
    weights = losses.class_weights(get_task("binary"), balanced, _manifest(["o"] * 8 + ["r"] * 2), ["o", "r"])
    assert weights == pytest.approx({0: 10 / 16, 1: 10 / 4})
    assert losses.class_weights(get_task("classification"), RunConfig(), _manifest(labels), ["a", "b", "c"]) is None
    with pytest.raises(ValueError, match=r"--class-weight balanced.*'multilabel'.*several labels"):
        losses.class_weights(get_task("multilabel"), balanced, _manifest(["a|b"]), ["a", "b"])
    with pytest.raises(ValueError, match=r"--class-weight balanced.*'contrastive'"):
        losses.class_weights(get_task("contrastive"), balanced, _manifest(["a"]), [])
    with pytest.raises(ValueError, match=r"train.csv has none of \['c'\]"):
        losses.class_weights(get_task("classification"), balanced, _manifest(["a", "b"]), ["a", "b", "c"])


def _texts(rng, n, rare: bool, noise=0.1):
    """Four words each, from the row's class list with probability 0.9, else from the other."""
    own, other = (RARE, COMMON) if rare else (COMMON, RARE)
    return [" ".join(rng.choice(other if rng.random() < noise else own) for _ in range(4)) for _ in range(n)]


def _write(folder, name, rng, n_common, n_rare) -> str:
    texts = _texts(rng, n_common, False) + _texts(rng, n_rare, True)
    path = os.path.join(folder, f"{name}.csv")
    images = []  # the manifest format has an image column (one file per row); a text run does not read it
    for i in range(len(texts)):
        images.append(os.path.join(folder, f"{name}_{i}.png"))
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(images[-1])
    pd.DataFrame({"image": images, "text": texts, "label": ["common"] * n_common + ["rare"] * n_rare}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def imbalanced_runs(tmp_path_factory):
    """Three seeded head-only runs on a 90/10 set (a frozen tiny BERT, cached features in one
    shared folder): plain cross-entropy, focal loss, balanced class weights; each evaluated on a
    balanced test set. A short schedule: plain cross-entropy has not yet learned the rare class."""
    from tests.conftest import make_tiny_bert_preset

    root = tmp_path_factory.mktemp("imbalance")
    keras.utils.set_random_seed(1)  # the session's tiny BERT is not seeded: a seeded one of the same shape
    tiny_bert = make_tiny_bert_preset(str(root / "bert"))
    rng = np.random.default_rng(1)
    data = {"train": _write(str(root), "train", rng, 180, 20), "val": _write(str(root), "val", rng, 36, 4),
            "test": _write(str(root), "test", rng, 100, 100)}
    cfg = RunConfig().replace(
        data={"sequence_length": 8},
        model={"modalities": "text", "text_encoder": f"keras_nlp:{tiny_bert}", "freeze_text": True,
               "projection_dim": 16, "hidden_dim": 0, "dropout": 0.0},
        train={"epochs": 12, "batch_size": 16, "learning_rate": 0.01, "early_stopping_patience": 0,
               "seed": 1, "cache_dir": str(root / "cache")},
    )
    runs = {}
    for name, extra in (("plain", {}), ("focal", {"loss": "focal"}), ("weighted", {"class_weight": "balanced"})):
        result = train(cfg.replace(train=extra), data["train"], data["val"], str(root / name), verbose=0)
        runs[name] = {"result": result, "metrics": tfmm.evaluate(result.run_dir, data["test"])}
    return runs


def _recall(run, label="rare"):
    return run["metrics"]["per_class"][label]["recall"]


@pytest.mark.slow
def test_focal_and_class_weights_raise_minority_recall(imbalanced_runs):
    plain, focal, weighted = (_recall(imbalanced_runs[k]) for k in ("plain", "focal", "weighted"))
    assert focal > plain + 0.05, (plain, focal)  # measured: 0.60 plain, 0.79 focal, 0.96 weighted
    assert weighted > plain + 0.1, (plain, weighted)
    assert _recall(imbalanced_runs["weighted"], "common") > 0.5  # not everything is called rare


@pytest.mark.slow
def test_imbalance_runs_record_their_loss_and_share_the_cache(imbalanced_runs):
    for name, loss in (("plain", "auto"), ("focal", "focal"), ("weighted", "auto")):
        result = imbalanced_runs[name]["result"]
        assert result.config.train.loss == loss
        assert len(result.history["loss"]) == 12
    assert imbalanced_runs["weighted"]["result"].config.train.class_weight == "balanced"
    cache = imbalanced_runs["plain"]["result"].config.train.cache_dir
    assert sorted(name.split("-")[0] for name in os.listdir(cache)) == ["text", "text"]  # train, val: once
