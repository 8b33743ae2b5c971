"""Talking to an exported model the way TF Serving does: REST bodies, gRPC requests, warmup.

TF Serving's two request formats are handled here so that a request can be tried locally
(``tfmm predict --request body.json``) before the model is deployed:

- REST (``POST /v1/models/NAME:predict``): a JSON body in row format
  ``{"instances": [{"image_bytes": {"b64": "..."}, "text": "..."}, ...]}`` answered with
  ``{"predictions": [...]}``, or in columnar format ``{"inputs": {"image_bytes": [...],
  "text": [...]}}`` answered with ``{"outputs": {...}}``. Binary strings travel as
  ``{"b64": "..."}``.
- gRPC (``PredictionService/Predict``): a ``tensorflow_serving.apis.predict_pb2.PredictRequest``
  whose inputs are ``TensorProto``\\ s made with ``tf.make_tensor_proto``.

Warmup files (``VERSION/assets.extra/tf_serving_warmup_requests``) are TFRecord files of
``PredictionLog`` protos wrapping such requests.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmm.serving.saved_model import (
    ASSETS_EXTRA, METADATA_FILE, PREDICT_BATCH, SIGNATURE, load_saved_model, read_files,
    resolve_saved_model, run_signature, signature_inputs,
)

logger = logging.getLogger(__name__)

MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many warmup records


# --- finding and loading a SavedModel ---------------------------------------------------


# --- REST ---------------------------------------------------------------------------------

def _from_json(value, dtype: tf.DType, where: str):
    """A JSON value -> nested Python values of ``dtype`` (``{"b64": ...}`` -> bytes)."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"{where}: an object must be {{\"b64\": \"...\"}}; received keys {sorted(value)}")
        if dtype != tf.string:
            raise ValueError(f"{where}: {{\"b64\": ...}} is only allowed for string inputs; this one is {dtype.name}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError) as e:
            raise ValueError(f"{where}: invalid base64 in \"b64\": {e}") from e
    if isinstance(value, list):
        return [_from_json(v, dtype, f"{where}[{i}]") for i, v in enumerate(value)]
    if dtype == tf.string:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string or {{\"b64\": ...}}; received {value!r}")
        return value.encode("utf-8")
    return value


def _as_array(values, dtype: tf.DType, where: str) -> np.ndarray:
    if dtype == tf.string:
        return np.array(values, dtype=object)
    try:
        return np.asarray(values, dtype=dtype.as_numpy_dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot be read as {dtype.name}: {e}") from e


def _json_body(body) -> dict:
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as e:
            raise ValueError(f"request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise ValueError(f"request body must be a JSON object; received {type(body).__name__}")
    return body


def parse_rest_request(body, specs: dict) -> tuple:
    """Reads a TF Serving REST predict body.

    Args:
        body: the JSON body (``str``/``bytes`` or the parsed ``dict``).
        specs: ``{input name: tf.TensorSpec}`` of the signature (see :func:`signature_inputs`).

    Returns:
        ``(signature_name, {input: np.ndarray}, row_format)``.

    Raises:
        ValueError: malformed body, with the offending key or row named.

    Example:
        >>> parse_rest_request({"instances": [{"image_bytes": {"b64": "iVBO..."}, "text": "hi"}]}, specs)
    """
    body = _json_body(body)
    signature = body.get("signature_name", SIGNATURE)
    formats = [key for key in ("instances", "inputs") if key in body]
    if len(formats) != 1:
        raise ValueError(
            "request body must have exactly one of 'instances' (row format) or 'inputs' "
            f"(columnar format); received keys {sorted(body)}"
        )
    names = sorted(specs)
    if formats[0] == "instances":
        rows = body["instances"]
        if not isinstance(rows, list):
            raise ValueError(f"'instances' must be a list of rows; received {type(rows).__name__}")
        columns = {name: [] for name in names}
        for i, row in enumerate(rows):
            if len(names) == 1 and not isinstance(row, dict):
                row = {names[0]: row}
            if not isinstance(row, dict) or sorted(row) != names:
                got = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"instances[{i}] must be an object with keys {names}; received {got}")
            for name in names:
                columns[name].append(_from_json(row[name], specs[name].dtype, f"instances[{i}].{name}"))
        arrays = {n: _as_array(v, specs[n].dtype, f"instances[*].{n}") for n, v in columns.items()}
        return signature, arrays, True
    inputs = body["inputs"]
    if len(names) == 1 and not isinstance(inputs, dict):
        inputs = {names[0]: inputs}
    if not isinstance(inputs, dict) or sorted(inputs) != names:
        got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(f"'inputs' must be an object with keys {names}; received {got}")
    arrays = {}
    for name in names:
        value = _from_json(inputs[name], specs[name].dtype, f"inputs.{name}")
        arrays[name] = _as_array(value, specs[name].dtype, f"inputs.{name}")
    return signature, arrays, False


def to_json(array: np.ndarray, name: str):
    """An output tensor as TF Serving writes it: float32 at its shortest, ``*_bytes`` as b64."""
    is_float32 = array.dtype == np.float32

    def convert(value):
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, bytes):
            if not name.endswith("_bytes"):
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}
        if is_float32:  # the shortest text that reads back as the same float32
            return float(str(np.float32(value)))
        return value

    return convert(array.tolist())


def format_rest_response(outputs: dict, row_format: bool) -> dict:
    """The JSON body TF Serving answers: ``{"predictions": rows}`` or ``{"outputs": columns}``.

    With one output, rows (or ``outputs``) hold its values directly; with several, each row
    is an object keyed by output name.
    """
    converted = {name: to_json(np.asarray(value), name) for name, value in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(converted.values())) if len(converted) == 1 else converted}
    sizes = {name: len(value) for name, value in converted.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"row format needs outputs with the same batch size; received {sizes}")
    if len(converted) == 1:
        return {"predictions": next(iter(converted.values()))}
    n = next(iter(sizes.values()), 0)
    return {"predictions": [{name: value[i] for name, value in converted.items()} for i in range(n)]}


def rest_request(image_bytes: Sequence[bytes], texts: Sequence[str], *, row_format: bool = True) -> dict:
    """A REST predict body for the ``serving_default`` signature.

    Example:
        >>> body = rest_request([open("cat.jpg", "rb").read()], ["a grey cat"])
        >>> requests.post("http://localhost:8501/v1/models/demo:predict", json=body)
    """
    if len(image_bytes) != len(texts):
        raise ValueError(f"one caption per image: received {len(image_bytes)} image(s) and {len(texts)} text(s)")
    images = [{"b64": base64.b64encode(b).decode("ascii")} for b in image_bytes]
    if row_format:
        return {"signature_name": SIGNATURE,
                "instances": [{"image_bytes": i, "text": t} for i, t in zip(images, texts)]}
    return {"signature_name": SIGNATURE, "inputs": {"image_bytes": images, "text": list(texts)}}


def predict_rest(model, body) -> dict:
    """Answers a REST predict body with a local SavedModel, as TF Serving would.

    Args:
        model: a SavedModel folder, an export root, or an already loaded SavedModel.
        body: the request body (JSON text or dict).

    Returns:
        The response body dict (``predictions`` or ``outputs``).

    Raises:
        ValueError: malformed body or unknown signature.
    """
    body = _json_body(body)
    loaded = load_saved_model(model) if isinstance(model, (str, os.PathLike)) else model
    name = body.get("signature_name", SIGNATURE)
    if name not in loaded.signatures:
        raise ValueError(f"signature_name must be one of {sorted(loaded.signatures)}; received {name!r}")
    fn = loaded.signatures[name]
    _, inputs, row_format = parse_rest_request(body, signature_inputs(fn))
    return format_rest_response(run_signature(fn, inputs), row_format)


# --- gRPC and warmup ----------------------------------------------------------------------

def grpc_request(image_bytes: Sequence[bytes], texts: Sequence[str], *, model_name: str,
                 signature_name: str = SIGNATURE, version: Optional[int] = None):
    """A ``PredictRequest`` (tensorflow-serving-api) for the serving signature.

    Example:
        >>> request = grpc_request([jpeg_bytes], ["a red circle"], model_name="demo")
        >>> PredictionServiceStub(channel).Predict(request, 10.0)
    """
    from tensorflow_serving.apis import predict_pb2

    if len(image_bytes) != len(texts):
        raise ValueError(f"one caption per image: received {len(image_bytes)} image(s) and {len(texts)} text(s)")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(image_bytes), dtype=tf.string, shape=[len(image_bytes)]))
    request.inputs["text"].CopyFrom(
        tf.make_tensor_proto([t.encode("utf-8") for t in texts], dtype=tf.string, shape=[len(texts)])
    )
    return request


def request_inputs(request) -> dict:
    """``{input: np.ndarray}`` of a ``PredictRequest``, ready for :func:`run_signature`."""
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def write_warmup(path: str, requests: Sequence) -> int:
    """Writes ``PredictRequest``\\ s as a TF Serving warmup file (TFRecord of ``PredictionLog``).

    Raises:
        ValueError: more than 1000 requests (TF Serving reads no more).
    """
    from tensorflow_serving.apis import prediction_log_pb2

    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"a warmup file holds at most {MAX_WARMUP_RECORDS} records; received {len(requests)}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def read_warmup(path: str) -> list:
    """The ``PredictRequest``\\ s of a warmup file."""
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests


# --- predicting manifests with a SavedModel -------------------------------------------------


def predict_saved_model(model: str, data, *, k: int = 5, config=None) -> list:
    """Top-k predictions of an exported model for every row of a manifest, from the files' bytes.

    The records have the same form as :func:`tfmm.evaluation.evaluate.predict` (``row``, ``labels``,
    ``scores``, ``true_label`` when known); models without ``scores``/``labels`` outputs give
    their raw outputs per row.

    Args:
        model: a SavedModel folder or export root.
        data: a manifest (path, DataFrame or :class:`~tfmm.data.manifest.Manifest`).
        config: the :class:`~tfmm.config.DataConfig` naming the columns (default: the one
            recorded in the export's ``tfmm.json``, else the defaults).
    """
    from tfmm.data.manifest import Manifest, check_manifest, read_manifest
    from tfmm.config import DataConfig
    from tfmm.tasks import get_task
    from tfmm.tasks.base import prediction_records
    from tfmm.tasks.metrics import top_k

    path = resolve_saved_model(model)
    meta = {}
    if os.path.isfile(os.path.join(path, ASSETS_EXTRA, METADATA_FILE)):
        with open(os.path.join(path, ASSETS_EXTRA, METADATA_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    if config is None:
        columns = meta.get("columns", {})
        config = DataConfig(**{f"{key}_col": columns[key] for key in ("image", "text", "label") if key in columns})
    manifest = data if isinstance(data, Manifest) else read_manifest(data, config, require_labels=False)
    manifest = check_manifest(manifest, encoding=get_task(meta.get("task", "classification")).encoding)
    images = read_files(manifest.frame["image"])
    fn = load_saved_model(path).signatures[SIGNATURE]
    outputs = run_signature(fn, {"image_bytes": np.array(images, dtype=object),
                                 "text": manifest.frame["text"].to_numpy(dtype=object)},
                            batch_size=PREDICT_BATCH)
    ranked = None
    if "scores" in outputs and "labels" in outputs and len(manifest):  # every row has the same labels
        labels = [name.decode("utf-8") for name in outputs["labels"][0]]
        ranked = top_k(outputs["scores"], labels, min(k, len(labels)))
    if ranked is not None:
        values = [{"labels": names, "scores": scores} for names, scores in ranked]
    else:
        values = [{name: to_json(value[i], name) for name, value in outputs.items()} for i in range(len(manifest))]
    return prediction_records(manifest, values)
