"""Tests for tfmm.export and tfmm.serving: the TF Serving export, its checks, REST/gRPC requests.

One tiny run is trained and exported (through the CLI) once per session; single-modality and
binary models are exported from untrained in-memory runs, which is enough to test the graph.
"""

import base64
import http.server
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

import tfmm
from tests.conftest import make_tiny_config
from tfmm import cli
from tfmm.config import RunConfig
from tfmm.data.images import decode_image
from tfmm.tasks import build_model, get_task
from tfmm.models.text import load_text_preprocessor
from tfmm.run_dir import LoadedRun
from tfmm.serving import export as tfexport, protocol, saved_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STRING_SPECS = {"image_bytes": tf.TensorSpec([None], tf.string), "text": tf.TensorSpec([None], tf.string)}


def _memory_run(config: RunConfig, labels, folder) -> LoadedRun:
    """An untrained run held in memory (no training: the export only needs model + preprocessor)."""
    config = config.replace(model={"num_classes": len(labels)})
    pre = None
    if config.model.uses_text:
        pre = load_text_preprocessor(config.model.text_encoder, config.data.sequence_length)
    return LoadedRun(str(folder), config, list(labels), build_model(config), pre)


def _png(color=(200, 30, 30), size=(20, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _to_jpeg(path: str, out: str) -> str:
    Image.open(path).convert("RGB").save(out, format="JPEG", quality=90)
    return out


def _call(fn, images, texts) -> dict:
    out = fn(image_bytes=tf.constant(images, tf.string, shape=[len(images)]),
             text=tf.constant(texts, tf.string, shape=[len(texts)]))
    return {k: v.numpy() for k, v in out.items()}


def _manifest_bytes(path: str, n: int):
    frame = pd.read_csv(path).head(n)
    root = os.path.dirname(path)
    images = [open(os.path.join(root, p), "rb").read() for p in frame["image"]]
    return frame, images, frame["text"].tolist()


# --- the export: layout, versions, metadata -----------------------------------------------------

@pytest.mark.slow
def test_export_writes_a_checked_version_with_serving_assets(export_root, exported, loaded_run):
    import tensorflow_text
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    assert sorted(os.listdir(export_root)) == ["1", "batching.config", "models.config"]  # no temp folder left
    for name in ("saved_model.pb", "variables", "assets.extra/tfmm.json", "assets.extra/tfmm_check.json",
                 "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(exported, name)), name
    meta = json.load(open(os.path.join(exported, "assets.extra", "tfmm.json")))
    assert meta["versions"]["tensorflow"] == tf.__version__
    assert meta["versions"]["tensorflow_text"] == tensorflow_text.__version__
    assert meta["labels"] == loaded_run.labels and meta["version"] == 1 and meta["model_name"] == "tiny"
    assert meta["checks"] and all(c["ok"] for c in meta["checks"])
    assert meta["ops"]["tensorflow_text"] == [] and not meta["ops"]["unregistered"]  # core-op tokenizer
    config = text_format.Parse(open(os.path.join(export_root, "models.config")).read(),
                               model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("tiny", "/models/tiny", "tensorflow")
    batching = open(os.path.join(export_root, "batching.config")).read()
    assert "max_batch_size { value: 32 }" in batching and "batch_timeout_micros" in batching


class _FakeArchive:
    """Stands in for the real archive where only the folder handling is tested."""

    def write_out(self, path, verbose=False):
        open(os.path.join(path, "saved_model.pb"), "wb").write(b"model")


def test_versions_are_next_integer_and_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(tfexport, "build_export_archive", lambda run: _FakeArchive())
    monkeypatch.setattr(tfexport, "make_check_sample", lambda *args, **kwargs: {})
    monkeypatch.setattr(tfexport, "serving_verdict", lambda path, report: {"summary": "fake"})
    run = LoadedRun(str(tmp_path / "run"), RunConfig(), ["a", "b"], None, None)
    root = tmp_path / "m"
    (root / "7.tmp").mkdir(parents=True)  # not a version: ignored
    assert tfexport.next_version(str(root)) == 1
    first = tfexport.export_for_serving(run, str(root), check=False)
    second = tfexport.export_for_serving(run, str(root), check=False)
    assert (first.version, second.version) == (1, 2) and second.model_name == "m"
    assert second.path == str(root / "2") and os.path.isfile(root / "2" / "saved_model.pb")
    (root / "1" / "saved_model.pb").write_bytes(b"served")
    with pytest.raises(FileExistsError, match=r"never overwritten; omit --version for the next one \(3\)"):
        tfexport.export_for_serving(run, str(root), version=1, check=False)
    assert (root / "1" / "saved_model.pb").read_bytes() == b"served"
    assert tfexport.export_for_serving(run, str(root), version=5, check=False).path == str(root / "5")
    assert tfexport.next_version(str(root)) == 6
    assert sorted(os.listdir(root)) == ["1", "2", "5", "7.tmp", "batching.config", "models.config"]
    monkeypatch.chdir(tmp_path)  # default export root: saved_models/<run folder name>
    assert tfexport.export_for_serving(run, check=False).path == str(tmp_path / "saved_models" / "run" / "1")


def test_a_failed_export_publishes_nothing(tmp_path, monkeypatch):
    class HalfWritten:
        def write_out(self, path, verbose=False):
            open(os.path.join(path, "saved_model.pb"), "wb").write(b"partial")
            raise OSError("disk full")

    monkeypatch.setattr(tfexport, "build_export_archive", lambda run: HalfWritten())
    run = LoadedRun(str(tmp_path / "run"), RunConfig(), ["a", "b"], None, None)
    with pytest.raises(OSError, match="disk full"):
        tfexport.export_for_serving(run, str(tmp_path / "m"))
    assert os.listdir(tmp_path / "m") == []  # neither a version folder nor the temporary one


def test_export_rejects_bad_arguments(tmp_path):
    run = LoadedRun(str(tmp_path / "run"), RunConfig(), ["a", "b"], None, None)
    with pytest.raises(ValueError, match="version must be an integer >= 1; received 0"):
        tfexport.export_for_serving(run, str(tmp_path / "m"), version=0)
    with pytest.raises(ValueError, match=r"warmup_records must be in \[0, 1000\]; received 1001"):
        tfexport.export_for_serving(run, str(tmp_path / "m"), warmup_records=1001)
    assert cli.main(["export", "--model", str(tmp_path / "nope")]) == 2


# --- checks -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_check_export_cli_passes_and_saved_model_cli_shows_string_inputs(export_root, exported, capsys):
    assert cli.main(["check-export", export_root]) == 0  # an export root: its highest version
    out = capsys.readouterr().out
    assert "all checks passed" in out and f"checked {exported}" in out
    for name in ("load", "signature", "predictions", "ops", "metadata", "warmup"):
        assert f"ok    {name}" in out
    shown = subprocess.run(["saved_model_cli", "show", "--dir", exported, "--all"],
                           capture_output=True, text=True, timeout=300).stdout
    default = shown.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    for name in ("image_bytes", "text"):
        block = default.split(f"inputs['{name}'] tensor_info:")[1]
        assert block.split("dtype:")[1].split()[0] == "DT_STRING"
        assert block.split("shape:")[1].split()[0] == "(-1)"


@pytest.mark.slow
def test_check_export_fails_when_predictions_differ(exported, tmp_path, capsys):
    copy = str(tmp_path / "5")
    shutil.copytree(exported, copy)
    path = os.path.join(copy, "assets.extra", "tfmm_check.json")
    sample = json.load(open(path))
    sample["expected"]["scores"][0][0] += 1e-3
    json.dump(sample, open(path, "w"))
    assert cli.main(["check-export", copy]) == 1
    out = capsys.readouterr().out
    assert "SOME CHECKS FAILED" in out and "FAIL  predictions  max abs diff 1.00e-03" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("FAIL")] == ["predictions"]


# --- the signature ------------------------------------------------------------------------------

@pytest.mark.slow
def test_signature_matches_the_training_pipeline(serving_fn, loaded_run, demo_data):
    manifest = tfmm.read_manifest(demo_data["val"], loaded_run.config.data)
    images = [open(p, "rb").read() for p in manifest.frame["image"]]
    got = _call(serving_fn, images, manifest.frame["text"].tolist())
    # classification: the scores as they are, divided by the run's fitted temperature
    want = get_task(loaded_run.config.model.task).calibrated(loaded_run, loaded_run.predict_scores(manifest))
    assert got["scores"].shape == (len(manifest), len(loaded_run.labels))
    assert np.max(np.abs(got["scores"] - want)) <= 1e-5
    assert all([b.decode() for b in row] == loaded_run.labels for row in got["labels"])


@pytest.mark.slow
def test_signature_errors_name_the_input_index(serving_fn):
    good = _png()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\] is not a JPEG, PNG, GIF or BMP"):
        _call(serving_fn, [good, b"hello", b""], ["a", "b", "c"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[2\] could not be decoded"):
        _call(serving_fn, [good, good, good[:60]], ["a", "b", "c"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one text per image"):
        _call(serving_fn, [good, good], ["only one"])
    empty = _call(serving_fn, [], [])
    assert empty["scores"].shape == (0, 9) and empty["labels"].shape == (0, 9)
    assert _call(serving_fn, [good], ["still serving"])["scores"].shape == (1, 9)


@pytest.mark.slow
def test_pixels_signature_equals_bytes_signature(exported, serving_fn):
    pixels_fn = saved_model.load_saved_model(exported).signatures["serving_pixels"]
    images = [_png((10, 200, 10)), _png((10, 10, 200), (64, 48))]
    decoded = tf.stack([decode_image(b, 32) for b in images])
    got = pixels_fn(image=decoded, text=tf.constant(["a", "b"]))
    want = _call(serving_fn, images, ["a", "b"])
    np.testing.assert_allclose(got["scores"].numpy(), want["scores"], atol=1e-6)


@pytest.mark.slow
def test_binary_export_scores_both_classes(tiny_bert, tmp_path):
    run = _memory_run(make_tiny_config(tiny_bert).replace(model={"task": "binary"}), ["no", "yes"], tmp_path)
    result = tfexport.export_for_serving(run, str(tmp_path / "m"), check=False)
    fn = saved_model.load_saved_model(result.path).signatures["serving_default"]
    out = _call(fn, [_png(), _png((0, 0, 250))], ["red", "blue"])
    assert out["scores"].shape == (2, 2) and out["labels"].tolist() == [[b"no", b"yes"]] * 2
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, atol=1e-6)
    # The stored check sample holds the model's [N, 1] sigmoid through the training pipeline.
    sample = json.load(open(os.path.join(result.path, "assets.extra", "tfmm_check.json")))
    images = [base64.b64decode(b) for b in sample["image_bytes_b64"]]
    np.testing.assert_allclose(_call(fn, images, sample["text"])["scores"], sample["expected"]["scores"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("modalities", ["image", "text"])
def test_single_modality_exports_take_both_inputs(tiny_bert, tmp_path, modalities):
    config = make_tiny_config(tiny_bert).replace(model={"modalities": modalities})
    run = _memory_run(config, ["a", "b", "c"], tmp_path)
    result = tfexport.export_for_serving(run, str(tmp_path / "m"), check=False)
    fn = saved_model.load_saved_model(result.path).signatures["serving_default"]
    assert sorted(saved_model.signature_inputs(fn)) == ["image_bytes", "text"]
    images = [_png((250, 0, 0)), _png((0, 250, 0))]
    if modalities == "image":  # text is ignored, even with another length
        a, b = _call(fn, images, ["x", "y"]), _call(fn, images, ["something else entirely"])
    else:  # image bytes are ignored, even when they are not images
        a, b = _call(fn, images, ["red", "green"]), _call(fn, [b"", b"junk"], ["red", "green"])
    assert a["scores"].shape == (2, 3)
    np.testing.assert_array_equal(a["scores"], b["scores"])


# --- requests: gRPC, REST, warmup ------------------------------------------------------------

FRESH_GRPC = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow_serving.apis import predict_pb2
request = predict_pb2.PredictRequest.FromString(open(sys.argv[2], "rb").read())
fn = tf.saved_model.load(sys.argv[1]).signatures[request.model_spec.signature_name]
out = fn(**{name: tf.make_ndarray(proto) for name, proto in request.inputs.items()})
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tfmm", "keras_hub", "tensorflow_hub"))
json.dump({"scores": out["scores"].numpy().tolist(), "labels": out["labels"].numpy().astype(str).tolist(),
           "imported": bad}, open(sys.argv[3], "w"))
"""


@pytest.mark.slow
def test_grpc_request_in_a_process_without_tfmm_matches_tfmm_predict(exported, demo_data, tmp_path, capsys):
    frame, _, texts = _manifest_bytes(demo_data["test"], 3)
    root = os.path.dirname(demo_data["test"])
    # Files beside the manifest written below (paths outside its folder are refused).
    files = [_to_jpeg(os.path.join(root, frame["image"][0]), str(tmp_path / "a.jpg")),
             shutil.copy(os.path.join(root, frame["image"][1]), str(tmp_path / "b.png")),
             shutil.copy(os.path.join(root, frame["image"][2]), str(tmp_path / "c.png"))]
    request = protocol.grpc_request([open(f, "rb").read() for f in files], texts, model_name="tiny")
    (tmp_path / "request.pb").write_bytes(request.SerializeToString())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", FRESH_GRPC, exported, str(tmp_path / "request.pb"),
                    str(tmp_path / "out.json")], cwd=tmp_path, env=env, check=True, timeout=300)
    fresh = json.load(open(tmp_path / "out.json"))
    assert fresh["imported"] == []

    pd.DataFrame({"image": files, "text": texts}).to_csv(tmp_path / "m.csv", index=False)
    assert cli.main(["predict", "--model", exported, "--data", str(tmp_path / "m.csv"), "--top-k", "9"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["row"] for r in records] == [0, 1, 2]
    for record, scores, labels in zip(records, fresh["scores"], fresh["labels"]):
        by_label = dict(zip(record["labels"], record["scores"]))
        assert record["scores"] == sorted(record["scores"], reverse=True)
        np.testing.assert_allclose([by_label[name] for name in labels], scores, atol=1e-6)


@pytest.mark.slow
def test_predict_request_rest_rows_and_columns(export_root, serving_fn, demo_data, tmp_path, capsys):
    _, images, texts = _manifest_bytes(demo_data["val"], 3)
    want = _call(serving_fn, images, texts)
    answers = {}
    for row_format in (True, False):
        path = tmp_path / f"request_{row_format}.json"
        path.write_text(json.dumps(protocol.rest_request(images, texts, row_format=row_format)))
        assert cli.main(["predict", "--model", export_root, "--request", str(path)]) == 0
        answers[row_format] = json.loads(capsys.readouterr().out)
    rows = answers[True]["predictions"]
    assert len(rows) == 3 and all(sorted(r) == ["labels", "scores"] for r in rows)
    np.testing.assert_allclose([r["scores"] for r in rows], want["scores"], atol=1e-7)
    assert answers[False]["outputs"]["scores"] == [r["scores"] for r in rows]
    assert answers[False]["outputs"]["labels"] == [r["labels"] for r in rows] == want["labels"].astype(str).tolist()

    (tmp_path / "one.png").write_bytes(images[1])
    assert cli.main(["predict", "--model", export_root, "--image", str(tmp_path / "one.png"),
                     "--text", texts[1], "--top-k", "2"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    best = np.argsort(-want["scores"][1])[:2]
    assert record["labels"] == [want["labels"][1][j].decode() for j in best]
    np.testing.assert_allclose(record["scores"], want["scores"][1][best], atol=1e-7)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(b"hi").decode()},
                                              "text": "x"}]}))
    assert cli.main(["predict", "--model", export_root, "--request", str(bad)]) == 1
    assert "image_bytes[0] is not a JPEG" in json.loads(capsys.readouterr().out)["error"]
    assert cli.main(["predict", "--model", str(tmp_path), "--request", str(bad)]) == 2


@pytest.mark.slow
def test_warmup_records_are_real_requests(exported, serving_fn, demo_data):
    requests = protocol.read_warmup(os.path.join(exported, saved_model.WARMUP_FILE))
    _, images, texts = _manifest_bytes(demo_data["val"], 5)
    assert len(requests) == 5
    for request, image, text in zip(requests, images, texts):
        assert request.model_spec.name == "tiny" and request.model_spec.signature_name == "serving_default"
        inputs = protocol.request_inputs(request)
        assert inputs["image_bytes"].tolist() == [image] and inputs["text"].tolist() == [text.encode()]
        assert saved_model.run_signature(serving_fn, inputs)["scores"].shape == (1, 9)


def test_parse_rest_request_formats_and_errors():
    b64 = {"b64": base64.b64encode(b"\x89PNG").decode()}
    name, inputs, rows = protocol.parse_rest_request(
        json.dumps({"instances": [{"image_bytes": b64, "text": "a"}, {"image_bytes": b64, "text": "b"}]}),
        STRING_SPECS)
    assert (name, rows) == ("serving_default", True)
    assert inputs["image_bytes"].tolist() == [b"\x89PNG"] * 2 and inputs["text"].tolist() == [b"a", b"b"]
    _, columns, rows = protocol.parse_rest_request(
        {"signature_name": "x", "inputs": {"image_bytes": [b64], "text": ["a"]}}, STRING_SPECS)
    assert not rows and columns["text"].tolist() == [b"a"]
    _, floats, _ = protocol.parse_rest_request({"instances": [[1, 2]]}, {"x": tf.TensorSpec([None, 2], tf.float32)})
    assert floats["x"].dtype == np.float32 and floats["x"].shape == (1, 2)
    for body, message in [
        ({"instances": [{"image_bytes": b64}]}, r"instances\[0\] must be an object with keys \['image_bytes', 'text'\]"),
        ({"instances": [], "inputs": {}}, "exactly one of 'instances'"),
        ({"instances": [{"image_bytes": {"b64": "!!"}, "text": "a"}]}, r"instances\[0\].image_bytes: invalid base64"),
        ({"instances": [{"image_bytes": {"b": "x"}, "text": "a"}]}, "must be {\"b64\""),
        ({"instances": [{"image_bytes": b64, "text": 3}]}, r"instances\[0\].text: expected a string"),
        ("not json", "not valid JSON"),
    ]:
        with pytest.raises(ValueError, match=message):
            protocol.parse_rest_request(body, STRING_SPECS)


def test_format_rest_response_like_tf_serving():
    outputs = {"scores": np.array([[0.1, 0.9]], np.float32), "labels": np.array([[b"a", b"b"]], object),
               "thumb_bytes": np.array([b"\xff\x00"], object)}
    rows = protocol.format_rest_response(outputs, row_format=True)
    assert rows == {"predictions": [{"scores": [0.1, 0.9], "labels": ["a", "b"], "thumb_bytes": {"b64": "/wA="}}]}
    columns = protocol.format_rest_response({"scores": outputs["scores"]}, row_format=False)
    assert columns == {"outputs": [[0.1, 0.9]]}
    assert protocol.format_rest_response({"scores": outputs["scores"]}, row_format=True) == {"predictions": [[0.1, 0.9]]}


# --- the example client, against in-process REST and gRPC servers ---------------------------------

@pytest.mark.slow
def test_serving_client_example_over_rest_and_grpc(exported, serving_fn, demo_data):
    import grpc
    from concurrent import futures
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    spec = importlib.util.spec_from_file_location("serving_client", os.path.join(REPO, "examples", "serving_client.py"))
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    loaded = saved_model.load_saved_model(exported)

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # what TF Serving does with the request
            assert request.model_spec.name == "tiny"
            outputs = saved_model.run_signature(loaded.signatures[request.model_spec.signature_name],
                                            protocol.request_inputs(request))
            response = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

    class Rest(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            assert self.path == "/v1/models/tiny:predict"
            body = protocol.predict_rest(loaded, self.rfile.read(int(self.headers["Content-Length"])).decode())
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), grpc_server)
    grpc_port = grpc_server.add_insecure_port("localhost:0")
    grpc_server.start()
    rest_server = http.server.ThreadingHTTPServer(("localhost", 0), Rest)
    threading.Thread(target=rest_server.serve_forever, daemon=True).start()
    try:
        _, images, texts = _manifest_bytes(demo_data["test"], 1)
        want = _call(serving_fn, images, texts)
        by_rest = client.rest_predict(images[0], texts[0], model="tiny", port=rest_server.server_address[1])
        by_grpc = client.grpc_predict(images[0], texts[0], model="tiny", port=grpc_port)
    finally:
        rest_server.shutdown()
        grpc_server.stop(None)
    for result in (by_rest, by_grpc):
        assert result["labels"] == want["labels"][0].astype(str).tolist()
        np.testing.assert_allclose(result["scores"], want["scores"][0], atol=1e-7)
    best = client.top_k(by_rest, 2)
    assert len(best) == 2 and best[0][1] == max(by_rest["scores"])


def test_demo_exports_the_fused_run(tmp_path, monkeypatch):
    from tfmm import demo

    calls = {}
    monkeypatch.setattr(demo, "write_demo_dataset", lambda folder, **kw: {s: f"{folder}/{s}.csv" for s in ("train", "val", "test")})
    monkeypatch.setattr(demo, "train", lambda config, train, val, run_dir, **kw: type("R", (), {"run_dir": run_dir})())
    monkeypatch.setattr(demo, "evaluate", lambda run_dir, data: {"accuracy": 1.0})

    def fake_export(run, export_dir, **kwargs):
        calls.update(run=run, export_dir=export_dir, **kwargs)
        return type("E", (), {"path": os.path.abspath(os.path.join(export_dir, "1"))})()

    monkeypatch.setattr(demo, "export_for_serving", fake_export)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    results = demo.run_demo(str(tmp_path / "demo"), epochs=1, n_train=18)
    assert calls["run"] == str(tmp_path / "demo" / "fused") and calls["export_dir"] == "saved_models/demo"
    assert calls["warmup_data"] == str(tmp_path / "demo" / "data" / "val.csv")
    assert results["export_dir"] == str(tmp_path / "saved_models" / "demo" / "1")
    assert any(results["export_dir"] in line for line in results["notes"])


def test_decision_flips_pass_only_where_the_score_rounding_crosses_the_threshold():
    from tfmm.serving.export_check import _same_decisions

    expected = {"match": [True, False, True], "match_score": [0.5000001, 0.3, 0.9]}
    assert _same_decisions(dict(expected), expected, "match", "match_score")
    # Row 0 sat on the threshold: the export's score is 1e-7 lower and says False.
    rounded = {"match": [False, False, True], "match_score": [0.5, 0.3, 0.9]}
    assert _same_decisions(rounded, expected, "match", "match_score")
    # The same score with another decision: another threshold, not rounding.
    other_threshold = {"match": [True, True, True], "match_score": [0.5000001, 0.3, 0.9]}
    assert not _same_decisions(other_threshold, expected, "match", "match_score")
    # A flip against the score's movement (score went up, decision went to False).
    backwards = {"match": [False, False, True], "match_score": [0.6, 0.3, 0.9]}
    assert not _same_decisions(backwards, expected, "match", "match_score")
    # Multi-label: per element; a missing output or another shape fails.
    ml = {"predicted": [[True, False]], "scores": [[0.7, 0.4]]}
    assert _same_decisions({"predicted": [[True, True]], "scores": [[0.7, 0.41]]}, ml, "predicted", "scores")
    assert not _same_decisions({"predicted": [[True, False]]}, ml, "predicted", "scores")
    assert not _same_decisions({"predicted": [[True]], "scores": [[0.7]]}, ml, "predicted", "scores")


def test_read_files_reads_remote_paths():
    from tfmm.serving.saved_model import read_files

    paths = ["ram://read_files/a.png", "ram://read_files/b.png"]
    for path, data in zip(paths, (b"\x89PNG one", b"two")):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    assert read_files(paths) == [b"\x89PNG one", b"two"]
