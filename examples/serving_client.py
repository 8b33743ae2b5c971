"""Query a TF Serving server that serves a tfmm export, over REST or gRPC.

Start the server first (README, Serve with Docker), e.g. for the demo model::

    docker run --rm -p 8500:8500 -p 8501:8501 -v "$PWD/saved_models/demo:/models/demo" \
        tensorflow/serving --model_config_file=/models/demo/models.config

then send an image file and its caption::

    python examples/serving_client.py --image tfmm_demo/data/images/test_0000.png --text "it is red"
    python examples/serving_client.py --image photo.jpg --text "a red circle" --grpc

REST needs only the standard library; gRPC needs ``tensorflow`` (for ``tf.make_tensor_proto``),
``tensorflow-serving-api`` and ``grpcio``. The script does not use tfmm: copy it anywhere.
"""

import argparse
import base64
import json
import urllib.error
import urllib.request

SIGNATURE = "serving_default"


def rest_predict(image_bytes: bytes, text: str, *, model: str = "demo", host: str = "localhost",
                 port: int = 8501, timeout: float = 30.0) -> dict:
    """POSTs one image + caption to ``/v1/models/MODEL:predict``; returns ``{"scores", "labels"}``."""
    body = {
        "signature_name": SIGNATURE,
        # Row format; binary strings travel base64-encoded under the key "b64".
        "instances": [{"image_bytes": {"b64": base64.b64encode(image_bytes).decode("ascii")}, "text": text}],
    }
    request = urllib.request.Request(
        f"http://{host}:{port}/v1/models/{model}:predict",
        data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as e:  # TF Serving explains a bad request in {"error": ...}
        raise RuntimeError(f"server answered HTTP {e.code}: {e.read().decode('utf-8', 'replace')}") from e
    row = answer["predictions"][0]
    return {"scores": row["scores"], "labels": row["labels"]}


def grpc_predict(image_bytes: bytes, text: str, *, model: str = "demo", host: str = "localhost",
                 port: int = 8500, timeout: float = 30.0) -> dict:
    """Calls ``PredictionService/Predict`` with one image + caption; returns ``{"scores", "labels"}``."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image_bytes], dtype=tf.string))
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([text.encode("utf-8")], dtype=tf.string))
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout)
    scores = tf.make_ndarray(response.outputs["scores"])[0]
    labels = tf.make_ndarray(response.outputs["labels"])[0]
    return {"scores": [float(s) for s in scores], "labels": [label.decode("utf-8") for label in labels]}


def top_k(result: dict, k: int = 3) -> list:
    """The ``k`` best ``(label, score)`` pairs, best first."""
    return sorted(zip(result["labels"], result["scores"]), key=lambda pair: -pair[1])[:k]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Send an image and its caption to a TF Serving tfmm model.")
    parser.add_argument("--image", required=True, help="a JPEG, PNG, GIF or BMP file")
    parser.add_argument("--text", required=True, help="the caption that goes with the image")
    parser.add_argument("--model", default="demo", help="model name on the server (default: demo)")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)

    with open(args.image, "rb") as f:
        image_bytes = f.read()
    if args.grpc:
        result = grpc_predict(image_bytes, args.text, model=args.model, host=args.host, port=args.grpc_port)
    else:
        result = rest_predict(image_bytes, args.text, model=args.model, host=args.host, port=args.rest_port)
    for label, score in top_k(result, args.top_k):
        print(f"{score:.4f}  {label}")


if __name__ == "__main__":
    main()
