"""Tests for what TF Serving sees of an export: the ops verdict in tfmm.json and the check
lines, warmup requests from the run's validation rows by default (or synthetic images, said
so), and odd strings in the ``text`` input.

They reuse the session's tiny trained run and its export (tests/conftest.py); the core-only
export is an untrained image-only run held in memory.
"""

import base64
import json
import logging
import os
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import make_tiny_config
from tests.serving.test_export import _call, _manifest_bytes, _memory_run, _png
from tfmm import cli
from tfmm.config import RunConfig
from tfmm.run_dir import LoadedRun, write_data_sources
from tfmm.serving import export as tfexport, protocol, saved_model, serving_compat
from tfmm.training.train import _as_manifest

SYNTHETIC_CAPTIONS = ["a red circle", "this is a green square", "blue triangle, as the caption says", ""]
MAGIC = [b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM"]


def _checks(meta: dict) -> dict:
    return {c["name"]: c for c in meta["checks"]}


def _warmup(path: str) -> list:
    return [protocol.request_inputs(r) for r in protocol.read_warmup(os.path.join(path, saved_model.WARMUP_FILE))]


# --- the serving verdict --------------------------------------------------------------------

@pytest.mark.slow
def test_export_records_the_verdict_of_its_non_core_ops(exported):
    meta = json.load(open(os.path.join(exported, "assets.extra", "tfmm.json")))
    non_core = sorted(meta["ops"]["tensorflow_text"] + meta["ops"]["unregistered"])
    assert set(meta["serving"]) == {"core_ops_only", "non_core_ops", "oldest_tf_serving", "unknown_ops", "notes",
                                    "summary"}
    assert meta["serving"] == serving_compat.serving_verdict(non_core)  # from the table, per the fresh process
    checks = _checks(meta)
    assert checks["ops"]["ok"] and checks["ops"]["detail"] == meta["serving"]["summary"]
    if "TFText>RoundRobinTrim" in non_core:  # KerasHub's BertTokenizer packer
        assert meta["serving"]["oldest_tf_serving"] == "2.20" and not meta["serving"]["core_ops_only"]
        assert meta["serving"]["non_core_ops"]["TFText>RoundRobinTrim"] == "2.20"
        assert "TFText>RoundRobinTrim (TF Serving 2.20+); loads in TF Serving 2.20+" in checks["ops"]["detail"]
    if non_core:
        assert f"imported for the non-core ops {meta['ops']['tensorflow_text']}" in checks["load"]["detail"]
    else:
        assert checks["ops"]["detail"] == "core only — loads in any TF Serving 2.x"


@pytest.mark.slow
def test_core_only_export_loads_with_tensorflow_alone_and_warms_up_on_synthetic_images(tiny_bert, tmp_path, caplog):
    run = _memory_run(make_tiny_config(tiny_bert).replace(model={"modalities": "image"}), ["a", "b", "c"],
                      tmp_path / "run")  # no data_sources.json: a run without recorded validation data
    with caplog.at_level(logging.WARNING, logger="tfmm.serving.export"):
        result = tfexport.export_for_serving(run, str(tmp_path / "m"))
    checks = {c.name: c for c in result.report.checks}
    assert result.report.ok and result.report.ops["tensorflow_text"] == [] == result.report.ops["unregistered"]
    assert checks["ops"].detail == "core only — loads in any TF Serving 2.x"
    assert checks["load"].detail.endswith(
        "only (tensorflow_text not imported: loads in a TensorFlow-only process)")
    meta = json.load(open(os.path.join(result.path, "assets.extra", "tfmm.json")))
    assert (meta["serving"]["core_ops_only"], meta["serving"]["non_core_ops"],
            meta["serving"]["oldest_tf_serving"]) == (True, {}, "any 2.x")
    # The fallback: one warmup request per synthetic image, and the output says why.
    assert result.warmup_source.startswith("4 request(s) from synthetic images: ")
    assert "records no validation manifest in data_sources.json" in result.warmup_source
    assert meta["warmup_source"] == result.warmup_source and meta["warmup_records"] == 4
    assert any("from synthetic images" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    requests = _warmup(result.path)
    assert [r["text"].tolist() for r in requests] == [[c.encode()] for c in SYNTHETIC_CAPTIONS]
    assert [r["image_bytes"][0][:len(m)] for r, m in zip(requests, MAGIC)] == MAGIC
    assert checks["warmup"].ok and checks["warmup"].detail == "4 PredictionLog record(s)"


# --- warmup from the run's validation rows -------------------------------------------------------

@pytest.mark.slow
def test_train_records_its_manifests_and_export_warms_up_on_validation_rows(trained_run, demo_data, tmp_path,
                                                                          capsys):
    sources = json.load(open(os.path.join(trained_run, "data_sources.json")))
    assert sources == {"train": {"path": os.path.abspath(demo_data["train"])},
                       "validation": {"path": os.path.abspath(demo_data["val"])}}
    root = str(tmp_path / "m")
    assert cli.main(["export", "--model", trained_run, "--export-dir", root, "--warmup-records", "3",
                     "--no-check"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^warmup: 3 request\(s\) from \d+ row\(s\) of the run's validation manifest "
                     + re.escape(os.path.abspath(demo_data["val"])) + "$", out, re.M)
    assert re.search(r"^TF Serving: (core only|non-core ops )", out, re.M)
    _, images, texts = _manifest_bytes(demo_data["val"], 3)
    requests = _warmup(os.path.join(root, "1"))
    assert [r["image_bytes"].tolist() for r in requests] == [[b] for b in images]
    assert [r["text"].tolist() for r in requests] == [[t.encode()] for t in texts]
    sample = json.load(open(os.path.join(root, "1", "assets.extra", "tfmm_check.json")))
    assert sample["sources"][0] == f"{os.path.abspath(demo_data['val'])} row 0"

    # --warmup-data overrides the recorded manifest.
    assert cli.main(["export", "--model", trained_run, "--export-dir", root, "--warmup-records", "2",
                     "--warmup-data", demo_data["test"], "--no-check"]) == 0
    assert "warmup: 2 request(s) from " in capsys.readouterr().out
    _, _, test_texts = _manifest_bytes(demo_data["test"], 2)
    assert [r["text"].tolist() for r in _warmup(os.path.join(root, "2"))] == [[t.encode()] for t in test_texts]


def test_recorded_validation_data_says_why_there_is_none(demo_data, tmp_path):
    run = LoadedRun(str(tmp_path), RunConfig(), ["a", "b"], None, None)
    manifest, reason = tfexport.recorded_validation_data(run)
    assert manifest is None and reason.startswith(f"{tmp_path} records no validation manifest in data_sources.json")

    frame = pd.read_csv(demo_data["val"])
    written = write_data_sources(str(tmp_path), demo_data["train"], frame)  # a DataFrame has no path
    assert written == {"train": {"path": os.path.abspath(demo_data["train"])}, "validation": None}
    assert tfexport.recorded_validation_data(run)[0] is None

    gone = str(tmp_path / "moved" / "val.csv")
    write_data_sources(str(tmp_path), None, gone)
    manifest, reason = tfexport.recorded_validation_data(run)
    assert manifest is None and reason == f"the run's validation manifest {gone} no longer exists"
    rows, source = tfexport._warmup_rows(run, None, 8)
    assert rows is None and source == (f"synthetic images: the run's validation manifest {gone} no longer exists; "
                                       "pass --warmup-data MANIFEST (warmup_data=) for real rows")

    manifest = _as_manifest(demo_data["val"], RunConfig())
    write_data_sources(str(tmp_path), None, manifest)  # a Manifest keeps its image folder
    found, reason = tfexport.recorded_validation_data(run)
    assert reason is None and found.root == manifest.root and len(found) == len(frame)


# --- odd strings in serving_default ----------------------------------------------------------------

ODD_TEXTS = {
    "empty": b"",
    "whitespace only": b" \t\n\r  \xe3\x80\x80",
    "NUL bytes": b"a\x00red\x00\x00circle",
    "10,000 characters": ("red circle " * 910)[:10_000].encode(),
    "10,000-character word": b"x" * 10_000,
    "invalid UTF-8": b"\xff\xfe\xc3( red \x80circle",
}


@pytest.mark.slow
def test_odd_texts_get_finite_scores_or_an_error_naming_the_row(serving_fn):
    texts = list(ODD_TEXTS.values())
    images = [_png()] * len(texts)
    for i, (name, text) in enumerate(ODD_TEXTS.items()):
        try:
            scores = _call(serving_fn, [_png(), _png()], [b"red", text])["scores"]
        except tf.errors.InvalidArgumentError as e:  # a refusal must name the input row
            assert re.search(r"text\[1\]", str(e)), (name, str(e)[:300])
            continue
        assert scores.shape == (2, 9) and np.isfinite(scores).all(), name
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5, err_msg=name)
    batch = _call(serving_fn, images, texts)["scores"]  # all at once, as one request
    assert batch.shape == (len(texts), 9) and np.isfinite(batch).all()
    # Over REST, invalid UTF-8 can only travel base64-encoded.
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(_png()).decode()},
                           "text": {"b64": base64.b64encode(ODD_TEXTS["invalid UTF-8"]).decode()}}]}
    _, inputs, _ = protocol.parse_rest_request(body, saved_model.signature_inputs(serving_fn))
    assert np.isfinite(saved_model.run_signature(serving_fn, inputs)["scores"]).all()


def test_load_and_ops_lines_from_fresh_process_results():
    from tfmm.serving import export_check

    tf_only = {"ok": True, "load_seconds": 1.5, "imported": ["tensorflow"], "versions": {"tensorflow": "2.21.0"},
               "ops": {"tensorflow": ["Identity"], "tensorflow_text": [], "unregistered": []}}
    assert export_check._load_check(tf_only).detail == (
        "loaded in 1.5 s by a fresh Python process importing tensorflow 2.21.0 only "
        "(tensorflow_text not imported: loads in a TensorFlow-only process)")
    with_text = {**tf_only, "imported": ["tensorflow", "tensorflow_text"],
                 "versions": {"tensorflow": "2.21.0", "tensorflow_text": "2.21.1"},
                 "ops": {"tensorflow": ["Identity"], "tensorflow_text": ["CaseFoldUTF8"], "unregistered": ["MyOp"]}}
    assert export_check._load_check(with_text).detail.endswith(
        "and tensorflow_text 2.21.1 (imported for the non-core ops ['CaseFoldUTF8'])")
    assert export_check.non_core_ops(with_text["ops"]) == ["CaseFoldUTF8", "MyOp"]
    risky = export_check._ops_check(with_text["ops"], serving_compat.serving_verdict(["CaseFoldUTF8", "MyOp"]))
    assert not risky.ok and "SERVING RISK" in risky.detail
    unread = export_check._ops_check({}, {})  # the fresh process stopped before reading the graph
    assert not unread.ok and unread.detail.startswith("not classified")
    assert str(export_check._ops_check(tf_only["ops"], serving_compat.serving_verdict([]))) == \
        "ok    ops          core only — loads in any TF Serving 2.x"
