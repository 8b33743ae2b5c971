"""Checks of an exported SavedModel, the ones ``tfmm export`` runs and ``tfmm check-export`` repeats.

- ``load``: the SavedModel loads in a fresh Python process that imports only ``tensorflow``
  (tfmm/serving/standalone_check.py, run with ``python -c`` from an empty folder), plus
  ``tensorflow_text`` only when the graph has ops TensorFlow core does not register; the
  line says which;
- ``signature``: ``serving_default`` takes ``image_bytes`` and ``text``, DT_STRING ``[-1]``;
- ``predictions``: that process's outputs on the raw files of the stored check sample equal the
  trained model's outputs through the training pipeline (max abs diff <= 1e-5);
- ``ops``: which TF Serving releases load the graph, from tfmm's table
  (:mod:`tfmm.serving.serving_compat`), not from what is installed: ``core only — loads in any TF
  Serving 2.x``, or each non-core op with the first TF Serving release that has it and the
  oldest release that loads them all (an op no release is known to have fails the check);
- ``metadata``: ``assets.extra/tfmm.json`` records the TF and TF Text versions and the labels;
- ``warmup``: the warmup file, when present, holds at most 1000 ``PredictionLog`` requests.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tfmm.serving import protocol, saved_model, serving_compat
from tfmm.serving.saved_model import ASSETS_EXTRA, CHECK_FILE, METADATA_FILE, SIGNATURE

TOLERANCE = 1e-5


@dataclasses.dataclass
class Check:
    """The outcome of one export check."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:12s} {self.detail}"


@dataclasses.dataclass
class CheckReport:
    """All checks of one export, with what the fresh process found."""

    path: str
    checks: list
    ops: dict
    versions: dict
    serving: dict = dataclasses.field(default_factory=dict)  # serving_compat.serving_verdict

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.checks)


class ExportCheckError(RuntimeError):
    """An export failed its checks; ``report`` says which and why."""

    def __init__(self, report: CheckReport):
        self.report = report
        failed = "\n  ".join(str(c) for c in report.checks if not c.ok)
        super().__init__(f"the export failed its checks (nothing was published):\n  {failed}")


def write_json(path: str, value) -> None:
    """Writes ``value`` as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)


def synthetic_images(folder: str, seed: int = 0) -> list:
    """One small image per format (PNG, JPEG, GIF, BMP), not square, so decoding and resizing
    are exercised for each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i, (fmt, ext) in enumerate((("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("BMP", "bmp"))):
        y, x = np.mgrid[0:40, 0:56]
        pixels = np.stack([(x * 4 + 60 * i) % 256, (y * 6) % 256, rng.integers(0, 256, (40, 56))], -1)
        path = os.path.join(folder, f"check_{i}.{ext}")
        Image.fromarray(pixels.astype("uint8")).save(path, format=fmt)
        paths.append(path)
    return paths


# --- checks ---------------------------------------------------------------------------------

def _fresh_process(saved_model: str, sample: dict, timeout: int = 600) -> dict:
    """Runs tfmm/serving/standalone_check.py in a new Python process (importing tensorflow, and
    tensorflow_text only for non-core ops) from an empty folder; returns its result dict."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standalone_check.py")
    with open(script, encoding="utf-8") as f:
        source = f.read()
    with tempfile.TemporaryDirectory() as folder:
        job = os.path.join(folder, "job.json")
        write_json(job, {"saved_model": os.path.abspath(saved_model), "signature": SIGNATURE,
                          "image_bytes_b64": sample["image_bytes_b64"], "text": sample["text"]})
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run([sys.executable, "-c", source, job, os.path.join(folder, "result.json")],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        try:
            with open(os.path.join(folder, "result.json"), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {"ok": False, "stage": "start", "error": f"exit code {proc.returncode}: {proc.stderr[-2000:]}"}


def _max_diff(got, expected) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64)), initial=0.0))


def _same_decisions(got: dict, expected: dict, name: str, score: str) -> bool:
    """Whether the decisions ``name`` (``score >= threshold``) agree, but for flips that the
    score's own rounding explains: where they differ, the score moved the same way across the
    threshold (an equal score, or one that moved the other way, means another threshold)."""
    try:
        g, e = np.asarray(got[name], bool), np.asarray(expected[name], bool)
        gs, es = np.asarray(got[score], np.float64), np.asarray(expected[score], np.float64)
    except (KeyError, ValueError):
        return False
    if g.shape != e.shape or gs.shape != g.shape or es.shape != e.shape:
        return False
    flipped = g != e
    return bool(np.all(np.where(e[flipped], gs[flipped] < es[flipped], gs[flipped] > es[flipped])))


def _load_check(result: dict) -> Check:
    versions = result.get("versions", {})
    if not (result.get("ok") or result.get("stage") == "predict"):
        return Check("load", False, f"failed at {result.get('stage')}: {result.get('error')}")
    if result.get("forbidden_modules"):
        return Check("load", False, f"the loading process imported {result['forbidden_modules']}")
    detail = f"loaded in {result.get('load_seconds')} s by a fresh Python process importing tensorflow " \
             f"{versions.get('tensorflow')}"
    if "tensorflow_text" in result.get("imported", []):
        non_core = result.get("ops", {}).get("tensorflow_text", [])
        detail += f" and tensorflow_text {versions.get('tensorflow_text')} (imported for the non-core ops {non_core})"
    else:
        detail += " only (tensorflow_text not imported: loads in a TensorFlow-only process)"
    return Check("load", True, detail)


def _signature_check(result: dict) -> Check:
    sig = result.get("signature") or {}
    inputs = sig.get("inputs") or {}
    want = {"dtype": "string", "shape": [-1]}
    shown = ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in sorted(inputs.items()))
    return Check("signature", sorted(inputs) == ["image_bytes", "text"] and all(v == want for v in inputs.values()),
                 f"{SIGNATURE}: {shown or 'missing'} -> {', '.join(sorted(sig.get('outputs', {})))}")


def _predictions_check(result: dict, sample: dict, tolerance: float) -> Check:
    if not result.get("ok"):
        return Check("predictions", False, f"not run: {result.get('stage')}: {result.get('error')}")
    if "expected" not in sample:
        return Check("predictions", False, f"ran on {len(sample['text'])} synthetic inputs, but there are no "
                                           f"reference outputs ({CHECK_FILE} is missing): re-export the run")
    got, expected = result["outputs"], sample["expected"]
    numeric = [k for k, v in expected.items() if np.asarray(v).dtype.kind in "fi"]
    worst = max((_max_diff(got.get(k, []), expected[k]) for k in numeric), default=0.0)
    decisions = sample.get("decisions", {})
    same_strings = all(
        _same_decisions(got, expected, k, decisions[k]) if k in decisions else got.get(k) == v
        for k, v in expected.items() if k not in numeric)
    synthetic = [s.split()[-1] for s in sample["sources"] if s.startswith("synthetic")]
    return Check(
        "predictions", set(got) == set(expected) and same_strings and worst <= tolerance,
        f"max abs diff {worst:.2e} (<= {tolerance:g}) vs the trained model through the training pipeline, "
        f"on {len(sample['text']) - len(synthetic)} data rows + synthetic {'/'.join(synthetic)}"
        + ("" if same_strings else "; string outputs differ"),
    )


def non_core_ops(ops: dict) -> list:
    """The ops the fresh process found TensorFlow core does not register (TF Text's or unknown)."""
    return sorted(ops.get("tensorflow_text", []) + ops.get("unregistered", []))


def _ops_check(ops: dict, verdict: dict) -> Check:
    if not ops:
        return Check("ops", False, "not classified: the fresh process stopped before reading the graph")
    callbacks = serving_compat.python_callbacks(op for names in ops.values() for op in names)
    if callbacks:
        return Check("ops", False, f"the graph calls back into Python ({', '.join(callbacks)}), which no TF Serving "
                                   "can run: a part of the model or its text tokenizer runs Python code "
                                   "(tf.py_function / tf.numpy_function) instead of TensorFlow ops; use a text "
                                   "encoder whose tokenizer runs as a TensorFlow graph (see the README's "
                                   "text encoder table)")
    return Check("ops", not verdict["unknown_ops"], verdict["summary"])


def _metadata_check(meta: dict, result: dict) -> Check:
    missing = [k for k in ("versions", "labels") if k not in meta]
    missing += [k for k in ("tensorflow", "tensorflow_text") if k not in meta.get("versions", {})]
    if missing:
        return Check("metadata", False, f"{ASSETS_EXTRA}/{METADATA_FILE} is missing or lacks {missing}")
    labels_out = (result.get("outputs") or {}).get("labels") or []
    ok = all(row == meta["labels"] for row in labels_out)
    return Check("metadata", ok, f"{METADATA_FILE}: tensorflow {meta['versions']['tensorflow']}, tensorflow_text "
                                 f"{meta['versions']['tensorflow_text']}, {len(meta['labels'])} labels"
                                 + ("" if ok else " that differ from the labels output"))


def _warmup_check(path: str) -> Check:
    warmup = os.path.join(path, saved_model.WARMUP_FILE)
    if not os.path.isfile(warmup):
        return Check("warmup", True, "no warmup file (tfmm export writes one from the run's validation "
                                     "rows, --warmup-data, or synthetic images; --warmup-records 0 writes none)")
    try:
        requests = protocol.read_warmup(warmup)
    except Exception as e:  # a corrupt file is this check's failure, whatever the error type
        return Check("warmup", False, f"unreadable: {e}")
    bad = [i for i, r in enumerate(requests) if sorted(r.inputs) != ["image_bytes", "text"]
           or r.model_spec.signature_name not in ("", SIGNATURE)]
    return Check("warmup", 0 < len(requests) <= protocol.MAX_WARMUP_RECORDS and not bad,
                 f"{len(requests)} PredictionLog record(s)" + (f"; bad records {bad[:10]}" if bad else ""))


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_export(path: str, *, tolerance: float = TOLERANCE) -> CheckReport:
    """Checks an export: fresh-process load, signature, predictions, ops, metadata, warmup.

    Args:
        path: a version folder, or an export root (its highest version is checked).
        tolerance: the largest allowed absolute difference between the loaded signature's
            outputs and the trained model's outputs through the training pipeline, stored
            at export time in ``assets.extra/tfmm_check.json``.

    Returns:
        A :class:`CheckReport` (``.ok`` is True when every check passed).

    Raises:
        FileNotFoundError: ``path`` is not a SavedModel.

    Example:
        >>> report = check_export("saved_models/demo")
        >>> print(report)
    """
    path = saved_model.resolve_saved_model(path)
    meta = _read_json(os.path.join(path, ASSETS_EXTRA, METADATA_FILE)) or {}
    sample = _read_json(os.path.join(path, ASSETS_EXTRA, CHECK_FILE))
    if sample is None:  # no reference outputs: still load and run it, on synthetic images
        with tempfile.TemporaryDirectory() as folder:
            images = saved_model.read_files(synthetic_images(folder))
        sample = {"image_bytes_b64": [base64.b64encode(b).decode("ascii") for b in images],
                  "text": ["a photo"] * len(images), "sources": ["synthetic"] * len(images)}
    result = _fresh_process(path, sample)
    ops = result.get("ops", {})
    verdict = serving_compat.serving_verdict(non_core_ops(ops)) if ops else {}  # {}: the graph was not read
    checks = [_load_check(result), _signature_check(result), _predictions_check(result, sample, tolerance),
              _ops_check(ops, verdict), _metadata_check(meta, result), _warmup_check(path)]
    return CheckReport(path, checks, ops, result.get("versions", {}), verdict)
