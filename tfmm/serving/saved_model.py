"""Exported SavedModels on disk: the file layout of a version, finding and loading one, and
running its signature in batches."""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)


SIGNATURE = "serving_default"


SAVED_MODEL_FILE = "saved_model.pb"


# What a tfmm export keeps next to the SavedModel (TF Serving reads only the warmup file).
ASSETS_EXTRA = "assets.extra"


WARMUP_FILE = os.path.join(ASSETS_EXTRA, "tf_serving_warmup_requests")


METADATA_FILE = "tfmm.json"  # in ASSETS_EXTRA


CHECK_FILE = "tfmm_check.json"  # in ASSETS_EXTRA


PREDICT_BATCH = 32


def version_dirs(export_root: str) -> dict:
    """``{version: path}`` for the integer-named folders of an export root (as TF Serving sees it)."""
    if not os.path.isdir(export_root):
        return {}
    return {
        int(name): os.path.join(export_root, name)
        for name in os.listdir(export_root)
        if name.isdigit() and os.path.isdir(os.path.join(export_root, name))
    }


def is_saved_model(path: str) -> bool:
    """True for a SavedModel folder or an export root holding versioned SavedModels."""
    try:
        resolve_saved_model(path)
        return True
    except FileNotFoundError:
        return False


def resolve_saved_model(path: str) -> str:
    """The SavedModel folder for ``path``: itself, or an export root's highest version.

    Raises:
        FileNotFoundError: ``path`` holds no ``saved_model.pb`` and no version folder with one.
    """
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    versions = {v: p for v, p in version_dirs(path).items()
                if os.path.isfile(os.path.join(p, SAVED_MODEL_FILE))}
    if versions:
        return versions[max(versions)]
    raise FileNotFoundError(
        f"{path!r} is not a SavedModel: no {SAVED_MODEL_FILE} in it or in an integer version "
        "folder under it (export a run with `tfmm export --model RUN`)"
    )


def saved_model_ops(path: str) -> list:
    """Op names of a SavedModel folder's graphs and function library (see tfmm/standalone_check.py)."""
    from tfmm.serving import standalone_check

    return standalone_check.graph_ops(standalone_check.read_saved_model(path))


def load_saved_model(path: str):
    """Loads an exported model; ``tensorflow_text`` is imported first only when the graph needs it.

    The graph's ops are read from ``saved_model.pb`` before loading: a graph of TensorFlow
    core ops loads with TensorFlow alone; one with ops this process has not registered
    (e.g. TF Text tokenizer ops) imports ``tensorflow_text``, which registers them.

    Args:
        path: a SavedModel folder or an export root (the highest version is loaded, as TF
            Serving would serve it).

    Returns:
        The object from ``tf.saved_model.load``; ``.signatures["serving_default"]`` is the
        serving signature.

    Raises:
        FileNotFoundError: ``path`` is not a SavedModel.

    Example:
        >>> fn = load_saved_model("saved_models/demo").signatures["serving_default"]
    """
    from tfmm.serving import standalone_check

    path = resolve_saved_model(path)
    missing = standalone_check.unregistered_ops(saved_model_ops(path))
    if missing:
        logger.debug("%s uses ops %s: importing tensorflow_text before loading", path, missing)
        import tensorflow_text  # noqa: F401  (registers the TF Text ops)
    return tf.saved_model.load(path)


def read_files(paths) -> list:
    """The bytes of each file, in order (local or on any ``tf.io.gfile`` filesystem)."""
    out = []
    for path in paths:
        with tf.io.gfile.GFile(path, "rb") as f:
            out.append(f.read())
    return out


def signature_inputs(fn) -> dict:
    """``{name: tf.TensorSpec}`` of a signature's inputs."""
    return dict(fn.structured_input_signature[1])


def run_signature(fn, inputs: dict, *, batch_size: Optional[int] = None) -> dict:
    """Calls a signature with numpy/list inputs; returns ``{output: np.ndarray}``.

    Args:
        fn: a signature of a loaded SavedModel.
        inputs: one value per signature input (by name), converted to its dtype.
        batch_size: call in chunks of this many rows (``None``: one call).

    Raises:
        ValueError: an input is missing or unknown (the message lists the expected ones).
    """
    specs = signature_inputs(fn)
    missing, unknown = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
    if missing or unknown:
        raise ValueError(
            f"the signature takes inputs {sorted(specs)}; received {sorted(inputs)}"
            + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else "")
        )
    tensors = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()}
    n = max((int(t.shape[0]) for t in tensors.values() if t.shape.rank), default=0)
    if not batch_size or n <= batch_size:
        return {k: v.numpy() for k, v in fn(**tensors).items()}
    chunks = [fn(**{k: t[i:i + batch_size] for k, t in tensors.items()}) for i in range(0, n, batch_size)]
    return {k: np.concatenate([c[k].numpy() for c in chunks]) for k in chunks[0]}


PIXELS_SIGNATURE = "serving_pixels"
