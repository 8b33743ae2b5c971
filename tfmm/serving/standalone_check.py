"""Stand-alone check of an exported SavedModel, run in a fresh Python process.

This file is a script, not a tfmm module: it imports ``tensorflow`` first and only, the way a
stock TF Serving binary knows only TensorFlow's ops, so that:

- the graph's ops are classified by what *TensorFlow core* registers (``tensorflow``); every
  other op is non-core, whatever is installed here;
- an export with core ops only is loaded and run with TensorFlow alone, which proves it loads
  in a TensorFlow-only process;
- an export with non-core ops makes this script import ``tensorflow_text`` (when installed)
  only then, to still load and run it; which servers have those ops is decided by the parent
  from tfmm's table (:mod:`tfmm.serving.serving_compat`), not from what was importable here.

It never imports tfmm, keras_hub or tensorflow_hub. :func:`tfmm.serving.export_check.check_export` runs it as
``python -c <this source> JOB.json RESULT.json`` from an empty folder.
:func:`tfmm.serving.saved_model.load_saved_model` reuses :func:`read_saved_model`, :func:`graph_ops` and
:func:`unregistered_ops`.

JOB.json: ``{"saved_model": DIR, "signature": NAME, "image_bytes_b64": [...], "text": [...]}``.
RESULT.json: ``ok``, ``stage`` and ``error`` on failure; ``ops`` (op names by where they are
registered: ``tensorflow`` (core), ``tensorflow_text`` (registered once it was imported),
``unregistered``), ``imported`` (the ML modules imported, e.g. ``["tensorflow"]``),
``signature`` (inputs and outputs with dtype and shape), ``outputs`` of the signature on the
job's inputs, ``forbidden_modules`` (tfmm/keras_hub/tensorflow_hub modules found imported),
``versions`` and ``load_seconds``.
"""

import base64
import json
import os
import sys
import time

FORBIDDEN = ("tfmm", "keras_hub", "keras_nlp", "tensorflow_hub")


def read_saved_model(saved_model_dir):
    """The ``SavedModel`` proto of ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def graph_ops(proto):
    """Op names used by the graphs and function libraries of a SavedModel (not function calls)."""
    ops = set()
    for meta in proto.meta_graphs:
        functions = {fn.signature.name for fn in meta.graph_def.library.function}
        ops.update(node.op for node in meta.graph_def.node)
        for fn in meta.graph_def.library.function:
            ops.update(node.op for node in fn.node_def)
        ops -= functions
    return sorted(ops)


def unregistered_ops(ops):
    """The ``ops`` this process has not registered (before ``import tensorflow_text``: non-core)."""
    from tensorflow.python.framework import op_def_registry

    return [op for op in ops if op_def_registry.get(op) is None]


def tensor_info(info):
    import tensorflow as tf

    shape = [-1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
    return {"dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": None if info.tensor_shape.unknown_rank else shape}


def signature_info(proto, name):
    """Inputs and outputs (dtype, shape) of signature ``name``, or None."""
    for meta in proto.meta_graphs:
        if name in meta.signature_def:
            sig = meta.signature_def[name]
            return {"inputs": {k: tensor_info(v) for k, v in sig.inputs.items()},
                    "outputs": {k: tensor_info(v) for k, v in sig.outputs.items()}}
    return None


def to_json(value):
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def main(job_path, result_path):
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    result = {"ok": False, "stage": "import"}
    try:
        import tensorflow as tf

        proto = read_saved_model(job["saved_model"])
        ops = graph_ops(proto)
        non_core = unregistered_ops(ops)
        result["versions"] = {"tensorflow": tf.__version__}
        if non_core:  # only now: a TF-only process could not load this graph
            try:
                import tensorflow_text

                result["versions"]["tensorflow_text"] = tensorflow_text.__version__
            except ImportError:
                pass  # loading fails below, naming the first missing op
        still_missing = unregistered_ops(non_core)
        result["ops"] = {"tensorflow": [op for op in ops if op not in non_core],
                         "tensorflow_text": [op for op in non_core if op not in still_missing],
                         "unregistered": still_missing}
        result["signature"] = signature_info(proto, job["signature"])

        result["stage"] = "load"
        start = time.time()
        loaded = tf.saved_model.load(job["saved_model"])
        result["load_seconds"] = round(time.time() - start, 2)
        fn = loaded.signatures[job["signature"]]

        result["stage"] = "predict"
        images = [base64.b64decode(b) for b in job["image_bytes_b64"]]
        outputs = fn(image_bytes=tf.constant(images, dtype=tf.string, shape=[len(images)]),
                     text=tf.constant(job["text"], dtype=tf.string, shape=[len(job["text"])]))
        result["outputs"] = {k: to_json(v.numpy().tolist()) for k, v in outputs.items()}
        result["ok"] = True
        del result["stage"]
    except Exception as e:  # reported to the parent process, which names the stage
        result["error"] = f"{type(e).__name__}: {e}"
    # What the process had imported by the end (tensorflow_text only when the graph needed it).
    result["imported"] = [m for m in ("tensorflow", "tensorflow_text") if m in sys.modules]
    result["forbidden_modules"] = sorted(
        m for m in sys.modules if m.split(".")[0] in FORBIDDEN
    )
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
