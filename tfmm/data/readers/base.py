"""The :class:`Manifest`: the one table every reader returns (re-exported by :mod:`tfmm.data.manifest`)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pandas as pd


@dataclasses.dataclass
class Manifest:
    """A validated-or-not table of examples.

    Attributes:
        frame: DataFrame with columns ``image`` (absolute local path, or ``scheme://`` path), ``text``, ``label``
            (``label`` is absent for unlabeled data) and ``row`` (row number in the source).
        source: the file it came from (or ``"<DataFrame>"``).
        root: the folder image paths are relative to.
        problems: records of the source that could not be read (malformed lines, images
            without a caption file, ...), reported by :func:`validate_manifest`.
        records: for a dataset prepared by ``tfmm prepare``, its TFRecord files (they hold
            the image bytes; ``image`` is then the original path, for messages only).
        written: ``{row: image path as the source wrote it}`` (before it was resolved), for
            messages.
    """

    frame: pd.DataFrame
    source: str
    root: str
    problems: list = dataclasses.field(default_factory=list)
    records: Optional[list] = None
    written: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def has_labels(self) -> bool:
        return "label" in self.frame.columns
