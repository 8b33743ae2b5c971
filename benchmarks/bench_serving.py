"""The exported SavedModel vs in-memory ``model.predict``: latency and throughput.

Trains a small run of the default model (VGG16 at 224 + MiniLM, both frozen, so training
takes seconds thanks to the feature cache), exports it with
``tfmm.serving.export.export_for_serving(run_dir, export_dir)`` and calls
``tf.saved_model.load(path).signatures["serving_default"]`` on raw requests
(``image_bytes``: encoded JPEGs, ``text``: captions; decoding, resizing and tokenizing run
inside the graph). The baseline is ``model.predict`` of the same run's ``model.keras`` on
already-preprocessed tensors (and, for reference, a compiled ``model(x)`` call).

Reports latency p50/p95 at batch 1 and images/s at batch 32, with the ratios
serving/predict. Run: ``python benchmarks/bench_serving.py`` (about 2-4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import common  # noqa: F401  (sets the environment and sys.path first)
from common import print_header, print_ratio, print_table, train_frozen_default_run


def _import_export():
    try:
        from tfmm.serving.export import export_for_serving
    except ImportError as e:
        sys.exit(
            f"bench_serving: cannot import tfmm.serving.export.export_for_serving ({e}).\n"
            "This benchmark measures the SavedModel written by tfmm/serving/export.py "
            "(export_for_serving(run_dir, export_dir) -> its version folder, signature "
            "serving_default(image_bytes, text) -> {scores, labels}); run it on a checkout "
            "that has the export module."
        )
    return export_for_serving


def _percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="batch-1 requests per side (default: 20)")
    parser.add_argument("--batches", type=int, default=2, help="batch-32 calls per side (default: 2)")
    args = parser.parse_args(argv)
    export_for_serving = _import_export()

    import numpy as np
    import tensorflow as tf

    from tfmm.data.manifest import read_manifest
    from tfmm.run_dir import load_run

    print_header("bench_serving: exported SavedModel vs in-memory model.predict")
    work = tempfile.mkdtemp(prefix="tfmm_bench_serving_")
    manifest_path, run_dir = train_frozen_default_run(work)
    exported = export_for_serving(run_dir, os.path.join(work, "export"))
    path = getattr(exported, "path", exported)  # an ExportResult (tfmm.export) or a path
    serve = tf.saved_model.load(path).signatures["serving_default"]
    run = load_run(run_dir)
    manifest = read_manifest(manifest_path, run.config.data)

    image_bytes = [open(p, "rb").read() for p in manifest.frame["image"]]
    texts = list(manifest.frame["text"])
    pre = next(iter(run.dataset(manifest, with_labels=False, batch_size=32)))  # preprocessed, in memory

    def request(i, n):
        idx = [(i + k) % len(texts) for k in range(n)]
        return (tf.constant([image_bytes[j] for j in idx]), tf.constant([texts[j] for j in idx]))

    def tensors(n):
        return {k: v[:n] for k, v in pre.items()}

    def serving(i, n):
        images, captions = request(i, n)
        return serve(image_bytes=images, text=captions)["scores"].numpy()

    compiled = tf.function(lambda x: run.model(x, training=False))
    sides = {
        "SavedModel serving_default (raw bytes + text)": serving,
        "model.predict (preprocessed tensors)": lambda i, n: run.model.predict(tensors(n), verbose=0),
        "compiled model(x) (preprocessed, reference)": lambda i, n: compiled(tensors(n)).numpy(),
    }
    # Same scores from both paths (the request holds rows 0..31 in order).
    got = serving(0, 32)
    want = run.model.predict(tensors(32), verbose=0)
    agree = float(np.abs(np.sort(got, axis=1) - np.sort(want, axis=1)).max())

    for fn in sides.values():  # warm up both batch sizes
        fn(0, 1), fn(0, 32)
    latency = {name: [] for name in sides}
    for i in range(args.requests):  # alternate sides request by request
        for name, fn in sides.items():
            start = time.perf_counter()
            fn(i, 1)
            latency[name].append(time.perf_counter() - start)
    throughput = {name: [] for name in sides}
    for i in range(args.batches):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn(i * 32, 32)
            throughput[name].append(32 / (time.perf_counter() - start))

    rows = [[name, _percentile(latency[name], 50), _percentile(latency[name], 95), max(throughput[name])]
            for name in sides]
    print(f"\nVGG16 224 + MiniLM 64 tokens; batch 1: {args.requests} requests per side, batch 32: best of "
          f"{args.batches} calls; max |score difference| SavedModel vs model.predict: {agree:.2e}")
    print_table(["what", "p50 ms (batch 1)", "p95 ms (batch 1)", "images/s (batch 32)"], rows)
    print()
    serving, predict = rows[0], rows[1]
    print_ratio("serving_p50_vs_predict_p50", serving[1] / predict[1], "latency ratio, lower is better")
    print_ratio("serving_p95_vs_predict_p95", serving[2] / predict[2], "latency ratio, lower is better")
    print_ratio("serving_throughput_vs_predict", serving[3] / predict[3], "~1: in-graph decode/tokenize is cheap")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
