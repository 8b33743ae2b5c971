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
from typing import Optional, Sequence

import pandas as pd

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
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


def read_table(path: str):
    """Reads a CSV/TSV/JSONL manifest leniently, line by line.

    Returns:
        ``(frame, problems)``: a DataFrame of strings (one row per readable record, with
        a ``_row`` column numbering every record from 0 after the header) and a list of
        :class:`RowProblem` for malformed or non-UTF-8 records.

    Raises:
        ValueError: unsupported extension, or no header.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in _SEPARATORS and ext not in (".jsonl", ".json"):
        raise ValueError(f"manifest {path!r}: unsupported extension {ext!r}; use .csv, .tsv or .jsonl")
    with open(path, "rb") as f:
        text, bad_lines = _decode_lines(f.read(), path)
    records, problems = [], []
    if ext in (".jsonl", ".json"):
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
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_SEPARATORS[ext])
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


def outside_root(path: str, root: str) -> bool:
    """True when ``path`` (after resolving ``..`` and symlinks) is not inside ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) != real_root


def image_problem(path: str, *, max_pixels: int) -> Optional[str]:
    """Why ``path`` is not a usable image, or None.

    Reads only the header for format and size, then decodes fully to catch truncation;
    images over ``max_pixels`` are refused before their pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        return "file not found"
    if not os.path.isfile(path):
        return "not a file"
    if not os.access(path, os.R_OK):
        return "unreadable file (permission denied)"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as img:
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
        with Image.open(path) as img:
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
    import tensorflow as tf

    tokens = tokenizer(tf.constant(list(texts)))
    lengths = tokens.row_lengths().numpy() if hasattr(tokens, "row_lengths") else [len(t) for t in tokens]
    return int(sum(n + 2 > length for n in lengths))  # [CLS] and [SEP] take two places
