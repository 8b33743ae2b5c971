"""Row-level checks of manifests and the files they name, for untrusted, scraped data.

Every check returns reasons instead of raising, so one pass reports every problem of a
manifest at once, each with its source, row, path and reason. ``tfmm.data`` calls these
before training, evaluation and prediction; ``tfmm validate`` runs them alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import posixpath
from typing import Optional, Sequence

import pandas as pd
import tensorflow as tf

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# read_table's formats: the extension each is read by (``fmt`` overrides the extension).
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
CONVERT_HINT = "convert it to PNG or JPEG, e.g. `convert in.webp out.png` or PIL's Image.save"


@dataclasses.dataclass(frozen=True)
class RowProblem:
    """One bad row: where it is and why it cannot be used."""

    source: str
    row: int
    image: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}: row {self.row}"
        return f"{where}: {self.image}: {self.reason}" if self.image else f"{where}: {self.reason}"


class ManifestError(ValueError):
    """Raised with every problem of a manifest at once."""

    def __init__(self, problems: Sequence[RowProblem], hint: str = ""):
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} problem(s) in {len({p.row for p in self.problems})} bad row(s):"
            f"\n  {shown}{more}" + (f"\n{hint}" if hint else "")
        )


def _decode_lines(raw: bytes, source: str):
    """Text of ``raw`` and ``{line_number: reason}`` for lines that are not UTF-8."""
    bad = {}
    try:
        return raw.decode("utf-8-sig"), bad
    except UnicodeDecodeError:
        pass
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            bad[number] = (
                f"line {number} is not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                "re-save the manifest as UTF-8"
            )
    logger.warning("%s: %d line(s) are not valid UTF-8", source, len(bad))
    return raw.decode("utf-8-sig", errors="replace"), bad


def _jsonl_records(text: str, bad_lines: dict, path: str):
    """:func:`read_table` for JSON lines: ``(frame, problems)``."""
    records, problems = [], []
    row = -1
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        row += 1
        if number in bad_lines:
            problems.append(RowProblem(path, row, "", bad_lines[number]))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(RowProblem(path, row, "", f"line {number}: malformed JSON ({e.msg})"))
            continue
        if not isinstance(record, dict):
            problems.append(RowProblem(path, row, "", f"line {number}: expected a JSON object; received {type(record).__name__}"))
            continue
        records.append({**{k: "" if v is None else str(v) for k, v in record.items()}, "_row": row})
    return pd.DataFrame(records), problems


def read_table(path: str, fmt: Optional[str] = None):
    """Reads a CSV/TSV/JSONL manifest leniently, line by line (any ``tf.io.gfile`` path).

    Args:
        path: the file (local, ``gs://``, ``ram://``, ...).
        fmt: ``csv``, ``tsv`` or ``jsonl``; default: from the extension (``.txt`` is TSV,
            ``.json`` JSON lines).

    Returns:
        ``(frame, problems)``: a DataFrame of strings (one row per readable record, with
        a ``_row`` column numbering every record from 0 after the header) and a list of
        :class:`RowProblem` for malformed or non-UTF-8 records.

    Raises:
        ValueError: unsupported extension, or no header.
    """
    ext = os.path.splitext(path)[1].lower()
    fmt = fmt or TABLE_FORMATS.get(ext)
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"manifest {path!r}: unsupported extension {ext!r}; use .csv, .tsv, .jsonl or "
                         ".parquet, or name the format with --data-format")
    with tf.io.gfile.GFile(path, "rb") as f:
        text, bad_lines = _decode_lines(f.read(), path)
    if fmt == "jsonl":
        return _jsonl_records(text, bad_lines, path)
    records, problems = [], []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
    header = next(reader, None)
    if not header:
        raise ValueError(f"manifest {path!r} is empty: expected a header line with column names")
    first_line, row = reader.line_num + 1, -1
    for fields in reader:
        lines = range(first_line, reader.line_num + 1)
        first_line = reader.line_num + 1
        if not fields:  # blank line
            continue
        row += 1
        bad = [bad_lines[n] for n in lines if n in bad_lines]
        if bad:
            problems.append(RowProblem(path, row, "", bad[0]))
            continue
        if len(fields) != len(header):
            problems.append(RowProblem(
                path, row, "",
                f"line {lines[0]}: malformed, expected {len(header)} fields ({', '.join(header)}); "
                f"found {len(fields)} (quote fields that contain the separator)",
            ))
            continue
        records.append({**dict(zip(header, fields)), "_row": row})
    return pd.DataFrame(records, columns=list(header) + ["_row"]), problems


def is_remote(path: str) -> bool:
    """Whether ``path`` names a ``tf.io.gfile`` filesystem other than the local one (``gs://``, ...)."""
    return "://" in str(path) and not str(path).startswith("file://")


def _split_remote(path: str) -> tuple:
    scheme, rest = path.split("://", 1)
    return scheme + "://", rest


def normalize_path(path: str) -> str:
    """``path`` with ``.`` and ``..`` resolved: remote paths keep their ``scheme://``, local
    paths become absolute."""
    if is_remote(path):
        scheme, rest = _split_remote(path)
        lead = "/" if rest.startswith("/") else ""
        rest = posixpath.normpath(rest) if rest else ""
        return scheme + (rest if rest not in (".", "/") else lead)
    return os.path.normpath(os.path.abspath(path))


def resolve_path(cell: str, base: str) -> str:
    """Where a manifest cell points: absolute (local or ``scheme://``) paths as they are,
    relative ones joined to ``base`` (a local or remote folder), ``..`` resolved."""
    if is_remote(cell) or os.path.isabs(cell):
        return normalize_path(cell)
    if is_remote(base):
        return normalize_path(posixpath.join(base, cell))
    return os.path.normpath(os.path.join(base, cell))


def outside_root(path: str, root: str) -> bool:
    """True when ``path`` (after resolving ``..`` and, for local files, symlinks) is not inside
    ``root``; a remote root (``gs://bucket/data``) only holds paths under that same prefix."""
    if is_remote(path) or is_remote(root):
        if not (is_remote(path) and is_remote(root)):
            return True
        path, root = normalize_path(path), normalize_path(root).rstrip("/")
        return not (path == root or path.startswith(root + "/"))
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) != real_root


def _file_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a readable, non-empty file (any ``tf.io.gfile`` filesystem), or None."""
    try:
        if not tf.io.gfile.exists(path):
            return "file not found"
        if tf.io.gfile.isdir(path):
            return "not a file"
        if not is_remote(path) and not os.access(path, os.R_OK):
            return "unreadable file (permission denied)"
        if tf.io.gfile.stat(path).length == 0:
            return "empty file (0 bytes)"
    except tf.errors.PermissionDeniedError:
        return "unreadable file (permission denied)"
    except tf.errors.OpError as e:
        return f"unreadable file ({e.message})"
    return None


def image_problem(path: str, *, max_pixels: int) -> Optional[str]:
    """Why ``path`` is not a usable image, or None.

    Reads the file through ``tf.io.gfile`` (local files and ``gs://``, ``s3://``, ``ram://``,
    ...), then its header for format and size, then decodes it fully to catch truncation;
    images over ``max_pixels`` are refused before their pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    why = _file_problem(path)
    if why:
        return why
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.PermissionDeniedError:
        return "unreadable file (permission denied)"
    except tf.errors.OpError as e:
        return f"unreadable file ({e.message})"
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
    except UnidentifiedImageError:
        return f"not an image (supported: {', '.join(IMAGE_FORMATS)})"
    except Image.DecompressionBombError as e:
        return f"image too large to decode safely ({e}); the limit is {max_pixels} pixels"
    except OSError as e:
        return f"truncated or corrupt image: {e}"
    if fmt not in IMAGE_FORMATS:
        return f"unsupported image format {fmt}; supported: {', '.join(IMAGE_FORMATS)} ({CONVERT_HINT})"
    if width * height > max_pixels:
        return (f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                "(--max-image-pixels); downscale it")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as e:  # truncated or corrupt data raise many types
        return f"truncated or corrupt image: {e}"
    return None


def duplicate_problems(frame: pd.DataFrame, source: str) -> list:
    """Rows that repeat an earlier row exactly (same image, text and label)."""
    keys = [c for c in ("image", "text", "label") if c in frame.columns]
    first = {}
    problems = []
    for rec in frame[["row"] + keys].itertuples(index=False):
        key = tuple(rec[1:])
        if key in first:
            problems.append(RowProblem(source, int(rec[0]), rec[1], f"duplicate of row {first[key]}"))
        else:
            first[key] = int(rec[0])
    return problems


def count_truncated(texts: Sequence[str], preprocessor) -> int:
    """How many texts have more tokens than the preprocessor keeps (0 when unknown)."""
    tokenizer = getattr(preprocessor, "tokenizer", None)
    length = getattr(preprocessor, "sequence_length", None)
    if tokenizer is None or length is None or not len(texts):
        return 0
    tokens = tokenizer(tf.constant(list(texts)))
    lengths = tokens.row_lengths().numpy() if hasattr(tokens, "row_lengths") else [len(t) for t in tokens]
    return int(sum(n + 2 > length for n in lengths))  # [CLS] and [SEP] take two places
