"""Export a trained run as a SavedModel for TF Serving, and check the export.

``export_for_serving`` writes ``EXPORT_ROOT/VERSION/`` with the signature
``serving_default``: raw image bytes (JPEG/PNG/GIF/BMP) and raw text in (``image_bytes``,
``text``: DT_STRING ``[-1]``), ``scores`` and ``labels`` out. Decoding and resizing
(:func:`tfmm.data.images.decode_image`) and tokenizing (the run's own text preprocessor) happen
inside the graph, exactly as in training. A second signature, ``serving_pixels``, takes
already-decoded images (``image``: float32 ``[-1, S, S, 3]`` RGB in ``[0, 255]``) for batch
pipelines.

A version folder holds::

    saved_model.pb, variables/, assets/
    assets.extra/tf_serving_warmup_requests   PredictionLog records TF Serving replays on load
    assets.extra/tfmm.json                    labels, task, TF/TF Text versions, ops, checks, and
                                              ``serving``: which TF Serving releases load it
    assets.extra/tfmm_check.json              a sample of raw inputs + the trained model's outputs

The version is written to a hidden temporary folder, checked, then renamed, so a server
polling the export root never sees half a model; existing versions are never overwritten.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
from typing import Optional

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tfmm.data.manifest import Manifest, check_manifest, read_manifest
from tfmm.files import publish_dir, write_text_atomic
from tfmm.serving import protocol, saved_model, serving_compat
from tfmm.serving.archive import build_export_archive
from tfmm.serving.export_check import (
    CheckReport, ExportCheckError, check_export, synthetic_images, write_json,
)
from tfmm.serving.saved_model import ASSETS_EXTRA, CHECK_FILE, METADATA_FILE, PIXELS_SIGNATURE, SIGNATURE
from tfmm.tasks import get_task

logger = logging.getLogger(__name__)

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MAX_SAMPLE_IMAGE_BYTES = 2_000_000  # larger files are left out of the stored check sample

BATCHING_TEXT = """\
# TF Serving batching parameters (BatchingParameters text proto), used with
#   --enable_batching --batching_parameters_file=/models/{name}/batching.config
# Requests arriving within batch_timeout_micros are run together, up to max_batch_size
# rows; image decoding runs per row inside the graph, the network once per batch.
max_batch_size {{ value: 32 }}
batch_timeout_micros {{ value: 5000 }}
max_enqueued_batches {{ value: 100 }}
num_batch_threads {{ value: {threads} }}
"""


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_for_serving` returns."""

    path: str  # the version folder
    export_root: str
    model_name: str
    version: int
    report: Optional[CheckReport]
    metadata: dict
    warmup_source: str = ""  # where the warmup requests came from (printed by `tfmm export`)


# --- the serving graph ----------------------------------------------------------------------


# --- versions, assets and the export itself ---------------------------------------------------

def next_version(export_root: str) -> int:
    """1 + the highest integer version folder under ``export_root`` (1 when there is none)."""
    return max(saved_model.version_dirs(export_root), default=0) + 1


def write_serving_configs(export_root: str, model_name: str) -> list:
    """Writes ``models.config`` and ``batching.config`` for TF Serving (kept when they exist).

    ``models.config`` serves the latest version of ``model_name`` from ``/models/NAME``, the
    path the export root is mounted at in the Docker instructions (README, Serve with Docker).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = model_name, f"/models/{model_name}", "tensorflow"
    entry.model_version_policy.latest.num_versions = 1
    texts = {MODELS_CONFIG: text_format.MessageToString(config),
             BATCHING_CONFIG: BATCHING_TEXT.format(name=model_name, threads=min(os.cpu_count() or 4, 8))}
    written = []
    for name, text in texts.items():
        path = os.path.join(export_root, name)
        if os.path.exists(path):
            logger.info("kept the existing %s", path)
            continue
        write_text_atomic(path, text)
        written.append(path)
    return written


def _versions() -> dict:
    import tensorflow_text

    out = {"tensorflow": tf.__version__, "tensorflow_text": tensorflow_text.__version__, "keras": keras.__version__}
    try:
        import keras_hub

        out["keras_hub"] = keras_hub.__version__
    except ImportError:
        pass
    from tfmm import __version__

    out["tfmm"] = __version__
    return out


def recorded_validation_data(run) -> tuple:
    """The validation manifest ``tfmm train`` recorded for ``run`` (``data_sources.json``).

    Returns:
        ``(manifest, None)`` with the manifest read from its recorded path (and image
        folder), or ``(None, reason)`` saying why there is none: the run recorded no
        validation manifest (trained without one, or on a DataFrame), the file no longer
        exists, or it could not be read.
    """
    from tfmm.run_dir import DATA_SOURCES_FILE, read_data_sources

    source = read_data_sources(run.run_dir).get("validation")
    if not source or not source.get("path"):
        return None, (f"{run.run_dir} records no validation manifest in {DATA_SOURCES_FILE} (trained without "
                      "validation data, on a DataFrame, or before tfmm recorded it)")
    path = source["path"]
    if "://" not in path and not os.path.exists(path):
        return None, f"the run's validation manifest {path} no longer exists"
    try:
        manifest = read_manifest(path, run.config.data, root=source.get("root"), require_labels=False)
    except (OSError, ValueError) as e:
        return None, f"the run's validation manifest {path} could not be read ({e})"
    return manifest, None


def _read_rows(run, data, limit: int) -> Manifest:
    """The first ``limit`` usable rows of a manifest (bad rows are skipped with a warning)."""
    manifest = data if isinstance(data, Manifest) else read_manifest(
        data, run.config.data, require_labels=False)
    head = Manifest(manifest.frame.head(2 * limit + 10), manifest.source, manifest.root)  # check few
    head = check_manifest(head, encoding=get_task(run.config.model.task).encoding, skip_bad_rows=True)
    return Manifest(head.frame.head(limit).reset_index(drop=True), manifest.source, manifest.root)


def make_check_sample(run, data=None, rows: int = 8) -> dict:
    """Raw inputs and the trained model's outputs on them through the training pipeline.

    Args:
        run: a :class:`~tfmm.run_dir.LoadedRun`.
        data: a manifest (path or DataFrame, checked here; or an already checked
            :class:`~tfmm.data.manifest.Manifest`) whose first ``rows`` rows are used (files over 2 MB
            are left out); one synthetic PNG, JPEG, GIF and BMP image are always added.

    Returns:
        ``{"sources", "image_bytes_b64", "text", "expected", "decisions"}`` (JSON-ready).
    """
    frames, sources = [], []
    if data is not None:
        manifest = data if isinstance(data, Manifest) else _read_rows(run, data, rows * 4)
        small = manifest.frame[[tf.io.gfile.stat(p).length <= MAX_SAMPLE_IMAGE_BYTES for p in manifest.frame["image"]]]
        small = small.head(rows)
        frames.append(small[["image", "text"]])
        sources += [f"{manifest.source} row {r}" for r in small["row"]]
    with tempfile.TemporaryDirectory() as folder:
        synthetic = synthetic_images(folder)
        captions = ["a red circle", "this is a green square", "blue triangle, as the caption says", ""]
        frames.append(pd.DataFrame({"image": synthetic, "text": captions}))
        sources += [f"synthetic {os.path.splitext(p)[1][1:].upper()}" for p in synthetic]
        frame = pd.concat(frames, ignore_index=True)
        frame.insert(0, "row", np.arange(len(frame)))
        manifest = Manifest(frame, "<check sample>", folder)
        images = saved_model.read_files(frame["image"])
        task = get_task(run.config.model.task)
        outputs_of = task.serving_outputs(run)
        batches = [outputs_of(features) for features in run.dataset(manifest)]
    outputs = {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
    expected = {k: protocol.to_json(v.numpy(), k) for k, v in outputs.items()}
    return {"sources": sources, "image_bytes_b64": [base64.b64encode(b).decode("ascii") for b in images],
            "text": frame["text"].tolist(), "expected": expected, "decisions": dict(task.serving_decisions)}


def _warmup_rows(run, warmup_data, limit: int) -> tuple:
    """The rows for the warmup requests and the check sample, and a sentence saying where they came from.

    ``warmup_data`` wins; else the run's recorded validation manifest; else ``(None, reason)``:
    the warmup requests are then made from the check sample's synthetic images.
    """
    if warmup_data is not None:
        rows = _read_rows(run, warmup_data, limit)
        return rows, f"{len(rows)} row(s) of {rows.source} (--warmup-data)"
    manifest, reason = recorded_validation_data(run)
    if manifest is not None:
        rows = _read_rows(run, manifest, limit)
        if len(rows):
            return rows, f"{len(rows)} row(s) of the run's validation manifest {rows.source}"
        reason = f"the run's validation manifest {manifest.source} has no usable rows"
    return None, f"synthetic images: {reason}; pass --warmup-data MANIFEST (warmup_data=) for real rows"


def _synthetic_requests(sample: dict, model_name: str, limit: int) -> list:
    """Warmup requests from the synthetic images (and captions) of a check sample."""
    columns = zip(sample.get("image_bytes_b64", []), sample.get("text", []), sample.get("sources", []))
    pairs = [(base64.b64decode(b), t) for b, t, source in columns if source.startswith("synthetic")]
    return [protocol.grpc_request([b], [t], model_name=model_name) for b, t in pairs[:limit]]


def _metadata(run, model_name: str, version: int, n_warmup: int) -> dict:
    """What ``assets.extra/tfmm.json`` records about an export."""
    dc, mc = run.config.data, run.config.model
    outputs = ", ".join(get_task(mc.task).serving_output_names)
    return {
        "model_name": model_name, "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_run": run.run_dir, "task": mc.task, "modalities": mc.modalities, "labels": list(run.labels),
        "image_size": dc.image_size, "sequence_length": dc.sequence_length,
        "text_encoder": mc.text_encoder, "image_encoder": mc.image_encoder,
        **({"encoder": mc.encoder} if mc.encoder else {}),  # a CLIP/SigLIP dual encoder: both branches
        "columns": {"image": dc.image_col, "text": dc.text_col, "label": dc.label_col},
        "signatures": {
            SIGNATURE: f"image_bytes, text (DT_STRING [-1]) -> {outputs}",
            PIXELS_SIGNATURE: f"image (DT_FLOAT [-1, {dc.image_size}, {dc.image_size}, 3], RGB 0..255), "
                              f"text (DT_STRING [-1]) -> {outputs}",
        },
        "versions": _versions(), "warmup_records": n_warmup,
    }


def serving_verdict(path: str, report: Optional[CheckReport] = None) -> dict:
    """Which TF Serving releases load the SavedModel at ``path`` (:func:`tfmm.serving.serving_compat.serving_verdict`).

    With a check ``report``, the non-core ops are those the fresh TensorFlow-only process
    could not find registered; without one, they are estimated here: ops of the table plus
    ops this process has not registered (this process may have imported tensorflow_text).
    """
    if report is not None and report.serving:
        return report.serving
    from tfmm.serving import standalone_check

    ops = saved_model.saved_model_ops(path)
    table_ops = serving_compat.load_table()["tf_text_ops"]
    non_core = [op for op in ops if op in table_ops] + standalone_check.unregistered_ops(ops)
    return serving_compat.serving_verdict(non_core)


def _resolve_run(run):
    from tfmm.run_dir import LoadedRun, load_run

    if isinstance(run, LoadedRun):
        return run
    return load_run(getattr(run, "run_dir", run))


def export_for_serving(
    run,
    export_dir: Optional[str] = None,
    *,
    version: Optional[int] = None,
    model_name: Optional[str] = None,
    warmup_data=None,
    warmup_records: int = 32,
    check: bool = True,
    check_rows: int = 8,
) -> ExportResult:
    """Exports a trained run for TF Serving as ``export_dir/VERSION``.

    Args:
        run: a run directory, a :class:`~tfmm.run_dir.LoadedRun` or a ``TrainResult``.
        export_dir: the export root (default ``saved_models/<run folder name>``).
        version: the version to write (default: the next integer); never overwritten.
        model_name: the name in ``models.config`` and warmup requests (default: the export
            root's folder name).
        warmup_data: a manifest whose first ``warmup_records`` rows become the warmup
            requests (``assets.extra/tf_serving_warmup_requests``) and, with synthetic
            images of each format, the check sample. Default: the validation manifest
            ``tfmm train`` recorded in the run's ``data_sources.json``; when the run has none
            (no validation data, a DataFrame, or the file is gone), the warmup requests and
            the check sample are made from synthetic images, and a warning says so
            (``ExportResult.warmup_source`` and ``tfmm.json`` say where they came from).
        warmup_records: at most 1000 (TF Serving's limit); 0 writes no warmup file.
        check: run :func:`check_export` before publishing the version.
        check_rows: manifest rows in the check sample.

    Returns:
        An :class:`ExportResult`.

    Raises:
        FileExistsError: ``version`` already exists.
        ExportCheckError: a check failed (nothing is published).
        ValueError: bad ``version`` or ``warmup_records``.

    Example:
        >>> result = export_for_serving("runs/demo", "saved_models/demo")  # warmup from the run's validation rows
        >>> result.path
        '.../saved_models/demo/1'
        >>> result.warmup_source
        "32 request(s) from 40 row(s) of the run's validation manifest .../data/val.csv"
    """
    run = _resolve_run(run)
    root = os.path.abspath(export_dir or os.path.join("saved_models", os.path.basename(run.run_dir.rstrip("/"))))
    model_name = model_name or os.path.basename(root)
    version, final = _new_version(root, version, warmup_records)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=root)  # not an integer: servers ignore it
    try:
        build_export_archive(run).write_out(tmp, verbose=False)  # stage
        metadata, warmup_source = _write_assets(tmp, run, model_name, version, warmup_data, warmup_records, check_rows)
        report, verdict = _check_staged(tmp, metadata, check)
        publish_dir(tmp, final)  # atomic: a polling server sees all of the version or none of it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if report is not None:
        report.path = final
    write_serving_configs(root, model_name)
    logger.info("exported %s (model %r, version %d); TF Serving: %s", final, model_name, version, verdict["summary"])
    return ExportResult(final, root, model_name, version, report, metadata, warmup_source)


def _new_version(root: str, version: Optional[int], warmup_records: int) -> tuple:
    """``(version, version folder)`` to write: the next integer by default; never an existing one."""
    if version is None:
        version = next_version(root)
    elif int(version) < 1:
        raise ValueError(f"version must be an integer >= 1; received {version!r}")
    if not 0 <= warmup_records <= protocol.MAX_WARMUP_RECORDS:
        raise ValueError(f"warmup_records must be in [0, {protocol.MAX_WARMUP_RECORDS}]; received {warmup_records}")
    final = os.path.join(root, str(int(version)))
    if os.path.exists(final):
        raise FileExistsError(
            f"{final} already exists and versions are never overwritten; omit --version for the "
            f"next one ({next_version(root)})"
        )
    return int(version), final


def _write_assets(folder: str, run, model_name: str, version: int, warmup_data, warmup_records: int,
                  check_rows: int) -> tuple:
    """Writes ``assets.extra/`` of a staged version: the check sample, the warmup requests and
    ``tfmm.json``. Returns ``(metadata, warmup_source)``."""
    extra = os.path.join(folder, ASSETS_EXTRA)
    os.makedirs(extra, exist_ok=True)
    # Real rows (--warmup-data, else the run's validation manifest) are read and checked
    # once, for the warmup and the check sample; without them both use synthetic images.
    rows, warmup_source = _warmup_rows(run, warmup_data, max(warmup_records, 4 * check_rows))
    if rows is None:
        logger.warning("warmup requests and check sample from %s", warmup_source)
    sample = make_check_sample(run, rows, check_rows)
    write_json(os.path.join(extra, CHECK_FILE), sample)
    if rows is not None:
        frame = rows.frame.head(warmup_records)
        requests = [protocol.grpc_request([b], [t], model_name=model_name)
                    for b, t in zip(saved_model.read_files(frame["image"]), frame["text"])]
    else:
        requests = _synthetic_requests(sample, model_name, warmup_records)
    n_warmup = protocol.write_warmup(os.path.join(folder, saved_model.WARMUP_FILE), requests) if requests else 0
    warmup_source = f"{n_warmup} request(s) from {warmup_source}" if n_warmup else "none (warmup_records=0)"
    metadata = _metadata(run, model_name, version, n_warmup)
    metadata["warmup_source"] = warmup_source
    write_json(os.path.join(extra, METADATA_FILE), metadata)
    return metadata, warmup_source


def _check_staged(folder: str, metadata: dict, check: bool) -> tuple:
    """Checks a staged version (``check``) and records the checks and the serving verdict in
    ``tfmm.json``. Returns ``(report or None, verdict)``.

    Raises:
        ExportCheckError: a check failed.
    """
    report = check_export(folder) if check else None
    if report is not None:
        metadata.update(ops={k: v for k, v in report.ops.items() if k != "tensorflow"},
                        checks=[dataclasses.asdict(c) for c in report.checks])
    verdict = serving_verdict(folder, report)
    metadata["serving"] = verdict  # core_ops_only, non_core_ops, oldest_tf_serving, notes, summary
    write_json(os.path.join(folder, ASSETS_EXTRA, METADATA_FILE), metadata)
    if report is not None and not report.ok:
        raise ExportCheckError(report)
    return report, verdict


