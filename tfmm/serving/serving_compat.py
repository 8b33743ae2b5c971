"""Which TensorFlow Serving releases load an export, from the ops its graph uses.

The answer comes from a table shipped with tfmm (``tfmm/serving/tf_serving_ops.json``: each TF
Serving release line, the TF Text version it links, and the first TF Text version of each
TF Text op a tfmm export may contain, with sources), never from what happens to be installed
on the exporting machine:

- ops registered by TensorFlow core load in any TF Serving 2.x;
- every other op needs a server that links it: for a TF Text op, the first release line
  whose TF Text has it; an op the table does not know is a serving risk (no official
  release is known to have it).

Which ops are core is decided by the caller, in a process that imported TensorFlow only
(tfmm/serving/standalone_check.py), since importing ``tensorflow_text`` registers its ops too.

Example:
    >>> serving_verdict(["TFText>RoundRobinTrim", "CaseFoldUTF8"])["oldest_tf_serving"]
    '2.20'
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional, Sequence

TABLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_serving_ops.json")
ANY_RELEASE = "any 2.x"
# Core ops that call back into the Python process that built the graph (``tf.py_function``,
# ``tf.numpy_function``): registered everywhere, runnable nowhere but there. No TF Serving can.
PYTHON_CALLBACK_OPS = ("EagerPyFunc", "PyFunc", "PyFuncStateless")
CORE_ONLY = "core only — loads in any TF Serving 2.x"


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


@functools.lru_cache(maxsize=None)
def load_table(path: str = TABLE_FILE) -> dict:
    """The compatibility table (``tf_serving``, ``tf_text_ops``, ``sources``, notes).

    Raises:
        ValueError: the file lacks ``tf_serving`` or ``tf_text_ops``, or an op names a
            ``since_tf_text`` that is not a version.
    """
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    missing = [key for key in ("tf_serving", "tf_text_ops") if key not in table]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; expected 'tf_serving' and 'tf_text_ops'")
    for op, info in table["tf_text_ops"].items():
        try:
            _version(info["since_tf_text"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: tf_text_ops[{op!r}] needs since_tf_text like '2.13.0'; "
                             f"received {info.get('since_tf_text')!r}") from e
    return table


def release_lines(table: Optional[dict] = None) -> list:
    """TF Serving release lines of the table, oldest first (``["2.12", ..., "2.20"]``)."""
    table = table or load_table()
    return sorted(table["tf_serving"], key=_version)


def ops_in_release(line: str, table: Optional[dict] = None) -> list:
    """The table's TF Text ops that TF Serving ``line`` (e.g. ``"2.19"``) links.

    Raises:
        ValueError: ``line`` is not in the table (the message lists the lines it has).
    """
    table = table or load_table()
    if line not in table["tf_serving"]:
        raise ValueError(f"TF Serving release line must be one of {release_lines(table)}; received {line!r}")
    linked = _version(table["tf_serving"][line]["tf_text"])
    return sorted(op for op, info in table["tf_text_ops"].items() if _version(info["since_tf_text"]) <= linked)


def first_release(op: str, table: Optional[dict] = None) -> Optional[str]:
    """The oldest TF Serving release line of the table that links ``op`` (``None``: none does)."""
    table = table or load_table()
    return next((line for line in release_lines(table) if op in ops_in_release(line, table)), None)


def serving_verdict(non_core_ops: Sequence[str], table: Optional[dict] = None) -> dict:
    """Which TF Serving releases load an export whose graph uses ``non_core_ops``.

    Args:
        non_core_ops: the graph's ops that TensorFlow core does not register (found in a
            process that imported TensorFlow only).

    Returns:
        A JSON-ready dict: ``core_ops_only`` (bool); ``non_core_ops`` (``{op: first TF
        Serving release line that has it, or None}``); ``oldest_tf_serving`` (``"any 2.x"``
        for core-only graphs, the oldest line that has every op, or ``None`` when no line
        of the table has them all); ``unknown_ops`` (ops no line has); ``notes`` (e.g. ops
        that need ICU data on some lines); ``summary`` (one line for the ``ops`` check).

    Example:
        >>> serving_verdict([])["summary"]
        'core only — loads in any TF Serving 2.x'
    """
    table = table or load_table()
    ops = sorted(set(non_core_ops))
    firsts = {op: first_release(op, table) for op in ops}
    unknown = [op for op, line in firsts.items() if line is None]
    if not ops:
        oldest = ANY_RELEASE
    elif unknown:
        oldest = None
    else:
        oldest = max(firsts.values(), key=_version)
    notes = _icu_notes(ops, oldest, table)
    return {"core_ops_only": not ops, "non_core_ops": firsts, "oldest_tf_serving": oldest,
            "unknown_ops": unknown, "notes": notes, "summary": _summary(firsts, oldest, unknown, notes, table)}


def python_callbacks(ops) -> list:
    """The ops of ``ops`` that call back into Python (:data:`PYTHON_CALLBACK_OPS`), sorted.

    A graph with one of them cannot be served: a text tokenizer that has no TensorFlow graph
    path (it runs Python through ``tf.py_function``) puts one there.

    Example:
        >>> python_callbacks(["StringSplitV2", "EagerPyFunc"])
        ['EagerPyFunc']
    """
    return sorted(set(ops) & set(PYTHON_CALLBACK_OPS))


def _icu_notes(ops: list, oldest: Optional[str], table: dict) -> list:
    icu_ops = [op for op in ops if table["tf_text_ops"].get(op, {}).get("needs_icu_data")]
    lines = [line for line in release_lines(table) if table["tf_serving"][line].get("icu_data_may_be_missing")]
    if oldest is not None and oldest != ANY_RELEASE:
        lines = [line for line in lines if _version(line) >= _version(oldest)]
    if not icu_ops or not lines:
        return []
    verb = "needs" if len(icu_ops) == 1 else "need"
    return [f"on TF Serving {', '.join(lines)}, {', '.join(icu_ops)} {verb} ICU normalization data the "
            "server's ICU build may not carry (tensorflow/serving#1613): try the export in that image first"]


def _summary(firsts: dict, oldest: Optional[str], unknown: list, notes: list, table: dict) -> str:
    if not firsts:
        return CORE_ONLY
    oldest_line = release_lines(table)[0]
    named = ", ".join(f"{op} (TF Serving {line}+)" if line else f"{op} (in no TF Serving release of the table)"
                      for op, line in firsts.items())
    if unknown:
        text = f"non-core ops {named}; SERVING RISK: no official TF Serving release is known to have {unknown}"
    else:
        since = f"{oldest}+" + (f" (the table starts at {oldest_line})" if oldest == oldest_line else "")
        text = f"non-core ops {named}; loads in TF Serving {since}"
    return "; ".join([text] + notes)
