"""tfmm.prepare: manifest -> sharded TFRecords, read back wherever a manifest is accepted."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmm.tasks import get_task
from tfmm.cli import main
from tfmm.config import DataConfig
from tfmm.data import tfrecords
from tfmm.data.manifest import (
    Manifest, build_label_vocab, check_manifest, is_prepared, read_manifest,
)
from tfmm.data.pipeline import make_dataset

CFG = DataConfig(image_size=32, sequence_length=8, cache_in_memory=False)


def _elements(ds):
    return [(f["image"].numpy(), f["token_ids"].numpy(), t.numpy()) for f, t in ds.unbatch()]


@pytest.fixture(scope="module")
def prepared(demo_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared") / "train")
    tfrecords.prepare_dataset(demo_data["train"], out, shards=3, verbose=0)
    return out


@pytest.fixture
def preprocessor(tiny_bert):
    from tfmm.models.text import load_text_preprocessor

    return load_text_preprocessor(f"keras_nlp:{tiny_bert}", 8)


def test_prepared_folder_reads_like_its_manifest(demo_data, prepared, preprocessor):
    assert sorted(os.listdir(prepared)) == [
        "data-00000-of-00003.tfrecord", "data-00001-of-00003.tfrecord", "data-00002-of-00003.tfrecord",
        "manifest.json", "rows.jsonl"]
    original = read_manifest(demo_data["train"])
    for source in (prepared, os.path.join(prepared, "manifest.json"), os.path.join(prepared, "*.tfrecord")):
        m = read_manifest(source)
        assert m.records and len(m.records) == 3
        pd.testing.assert_frame_equal(m.frame[["row", "image", "text", "label"]],
                                      original.frame[["row", "image", "text", "label"]])
    m = read_manifest(prepared)
    assert check_manifest(m) is m  # images were checked by prepare
    labels = build_label_vocab(m)
    common = dict(config=CFG, preprocessor=preprocessor, labels=labels, batch_size=16)
    expected = _elements(make_dataset(original, **common))
    got = _elements(make_dataset(m, **common))
    assert len(got) == len(expected) == 72
    for a, b in zip(got, expected):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    shuffled = _elements(make_dataset(m, shuffle=True, seed=1, **common))
    order = [int(t.argmax()) for _, _, t in shuffled]
    assert sorted(order) == sorted(int(t.argmax()) for _, _, t in expected)
    assert order != [int(t.argmax()) for _, _, t in expected]


def test_dropped_rows_are_left_out_and_labels_encode_in_graph(prepared, preprocessor):
    m = read_manifest(prepared)
    kept = Manifest(m.frame.iloc[[1, 40, 70]].reset_index(drop=True), m.source, m.root, records=m.records)
    for name in ("classification", "multilabel", "contrastive"):  # one-hot, multi-hot, pair ids
        task = get_task(name)
        labels = task.label_vocab(m)
        ds = make_dataset(kept, config=CFG, preprocessor=preprocessor, labels=labels, targets=task, batch_size=8)
        (_, targets), = list(ds)
        np.testing.assert_array_equal(targets.numpy(), task.encode_targets(kept, labels))
        assert ds.cardinality().numpy() == 1  # known, for progress bars


def test_binary_and_unlabeled_prepared_data(demo_data, tmp_path, preprocessor):
    df = pd.read_csv(demo_data["val"]).head(6)
    df["image"] = [os.path.join(os.path.dirname(demo_data["val"]), p) for p in df["image"]]
    df["label"] = ["yes", "no"] * 3
    out = str(tmp_path / "bin")
    tfrecords.prepare_dataset(df, out, verbose=0)
    m = read_manifest(out)
    ds = make_dataset(m, config=CFG, preprocessor=preprocessor, labels=["no", "yes"], targets="index", batch_size=6)
    (_, targets), = list(ds)
    np.testing.assert_array_equal(targets.numpy(), [[1.0], [0.0]] * 3)
    unlabeled = str(tmp_path / "unlabeled")
    tfrecords.prepare_dataset(df.drop(columns=["label"]), unlabeled, verbose=0)
    assert not read_manifest(unlabeled, require_labels=False).has_labels
    with pytest.raises(ValueError, match="has no labels"):
        read_manifest(unlabeled)


def test_prepare_writes_through_tf_io_gfile(demo_data, preprocessor):
    """Any tf.io.gfile filesystem works (gs:// in real use; the in-memory ram:// here)."""
    out = "ram://tfmm_prepared/val"
    tfrecords.prepare_dataset(demo_data["val"], out, shards=2, verbose=0)
    assert is_prepared(out) and not os.path.exists(out)
    m = read_manifest(out)
    assert len(m) == 18 and all(r.startswith("ram://") for r in m.records)
    ds = make_dataset(m, config=CFG, preprocessor=preprocessor, labels=build_label_vocab(m), batch_size=18)
    assert next(iter(ds))[0]["image"].shape == (18, 32, 32, 3)


def test_prepare_errors(tmp_path, demo_data):
    with pytest.raises(FileNotFoundError, match="no TFRecord file matches"):
        read_manifest(str(tmp_path / "*.tfrecord"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "else", "version": 1}))
    with pytest.raises(ValueError, match="is not a 'tfmm.tfrecord'"):
        read_manifest(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="shards must be > 0; received 0"):
        tfrecords.prepare_dataset(demo_data["val"], str(tmp_path / "x"), shards=0)


@pytest.mark.slow
def test_cli_prepare_then_train_on_it(demo_data, tiny_bert, tmp_path, capsys):
    out = str(tmp_path / "train_tfr")
    assert main(["prepare", "--data", demo_data["train"], "--output-dir", out, "--shards", "2"]) == 0
    assert "manifest.json" in capsys.readouterr().out
    run = str(tmp_path / "run")
    assert main(["train", "--data", out, "--val-data", demo_data["val"], "--output-dir", run,
                 "--text-encoder", f"keras_nlp:{tiny_bert}", "--image-weights", "none", "--image-size", "32",
                 "--sequence-length", "8", "--projection-dim", "8", "--hidden-dim", "0", "--epochs", "1",
                 "--batch-size", "16", "--freeze-image", "--freeze-text"]) == 0
    # Both encoders frozen: the prepared data's features were cached like a manifest's.
    assert len(os.listdir(os.path.join(run, "feature_cache"))) == 4
    assert main(["evaluate", "--model", run, "--data", out]) == 0
    assert json.load(open(os.path.join(run, "metrics.json")))["n_examples"] == 72
