"""Label encodings: how a manifest's label column becomes training targets.

A task chooses one :class:`LabelEncoding` (``tfmm.tasks``); the data layer only knows the
encodings, never the tasks:

- ``one_hot``: one label per row -> ``[N, C]`` one-hot;
- ``index``: one of two labels per row -> ``[N, 1]`` 0/1 (``labels[1]`` is the positive class);
- ``multi_hot``: ``|``-separated labels per row -> ``[N, C]`` multi-hot;
- ``pair_ids``: the label column is unused; targets are ``[N, 2]`` (image id, caption id),
  see :func:`pair_ids`.

Each encoding turns label strings into targets in numpy (:meth:`LabelEncoding.encode`, for
manifests in memory) and in the graph (:meth:`LabelEncoding.encode_tensor`, for prepared
TFRecords); tests hold the two equal.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

MULTILABEL_SEP = "|"
ENCODINGS = ("one_hot", "index", "multi_hot", "pair_ids")


def pair_ids(frame: pd.DataFrame) -> np.ndarray:
    """``[N, 2]`` float32 (image id, caption id) of a manifest frame: equal ids mean the same
    file / caption.

    These are the contrastive targets: rows ``i`` and ``j`` of a batch are a positive pair
    when they share an image or a caption (see :class:`tfmm.models.pair_heads.ContrastiveLoss`).
    """
    image_ids, _ = pd.factorize(frame["image"])
    text_ids, _ = pd.factorize(frame["text"])
    return np.stack([image_ids, text_ids], axis=1).astype("float32")


@dataclasses.dataclass(frozen=True)
class LabelEncoding:
    """One way of reading the label column (see the module docstring).

    Args:
        name: one of ``ENCODINGS``.

    Raises:
        ValueError: an unknown ``name``.
    """

    name: str

    def __post_init__(self):
        if self.name not in ENCODINGS:
            raise ValueError(f"label encoding must be one of {list(ENCODINGS)}; received {self.name!r}")

    @property
    def multi(self) -> bool:
        """Rows may hold several ``|``-separated labels."""
        return self.name == "multi_hot"

    @property
    def uses_labels(self) -> bool:
        """The label column matters (checked by row validation, read into targets)."""
        return self.name != "pair_ids"

    def split(self, label: str) -> list:
        """The label(s) of one row: several for ``multi_hot``, else at most one."""
        if self.multi:
            return [part.strip() for part in label.split(MULTILABEL_SEP) if part.strip()]
        return [label.strip()] if label.strip() else []

    def vocabulary(self, frame: pd.DataFrame) -> list:
        """Sorted distinct labels of a manifest frame."""
        labels = set()
        for value in frame["label"]:
            labels.update(self.split(value))
        return sorted(labels)

    def encode(self, frame: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
        """Float32 targets of every row of a manifest frame (see the module docstring)."""
        if self.name == "pair_ids":
            return pair_ids(frame)
        index = {name: i for i, name in enumerate(labels)}
        rows = [self.split(v) for v in frame["label"]]
        if self.name == "index":
            return np.array([[float(index[r[0]])] for r in rows], dtype="float32").reshape(-1, 1)
        out = np.zeros((len(rows), len(labels)), dtype="float32")
        for i, row_labels in enumerate(rows):
            for name in row_labels:
                out[i, index[name]] = 1.0
        return out

    def encode_tensor(self, label: tf.Tensor, table: tf.lookup.StaticHashTable, num_labels: int) -> tf.Tensor:
        """One row's label string -> its targets, in the graph (``table``: label -> id).

        Raises:
            ValueError: ``pair_ids``, whose targets depend on the other rows (see
                :func:`pair_ids`).
        """
        if self.name == "pair_ids":
            raise ValueError("pair_ids targets depend on every row; encode them with encode()")
        if self.multi:
            parts = tf.strings.strip(tf.strings.split(label, MULTILABEL_SEP))
            ids = table.lookup(tf.boolean_mask(parts, tf.strings.length(parts) > 0))
            return tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_labels), axis=0), 1.0)
        index = table.lookup(tf.strings.strip(label))
        if self.name == "index":
            return tf.reshape(tf.cast(index, tf.float32), [1])
        return tf.one_hot(index, num_labels)

    def class_ids(self, targets: np.ndarray) -> np.ndarray:
        """``[N]`` integer class ids from single-label targets (``one_hot`` or ``index``).

        Raises:
            ValueError: a multi-label or pair encoding (rows have no single class).
        """
        if self.name == "index":
            return np.asarray(targets)[:, 0].astype(int)
        if self.name == "one_hot":
            return np.asarray(targets).argmax(axis=1)
        raise ValueError(f"class ids need a single-label encoding (one_hot, index); received {self.name!r}")


ONE_HOT = LabelEncoding("one_hot")
INDEX = LabelEncoding("index")
MULTI_HOT = LabelEncoding("multi_hot")
PAIR_IDS = LabelEncoding("pair_ids")


def as_encoding(value) -> LabelEncoding:
    """A :class:`LabelEncoding` from itself, its name, or an object with an ``encoding``
    attribute (a task from :mod:`tfmm.tasks`)."""
    if isinstance(value, LabelEncoding):
        return value
    if isinstance(value, str):
        return LabelEncoding(value)
    encoding = getattr(value, "encoding", None)
    if isinstance(encoding, LabelEncoding):
        return encoding
    raise TypeError(f"expected a LabelEncoding, its name or a task; received {value!r}")
