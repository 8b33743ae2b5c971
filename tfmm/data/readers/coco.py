"""COCO-style caption annotations: one JSON file, one row per caption.

::

    {"images": [{"id": 1, "file_name": "000001.jpg"}, ...],
     "annotations": [{"id": 10, "image_id": 1, "caption": "A man riding a horse."}, ...]}

Image ``file_name`` is relative to the JSON file's folder (or to the ``root`` given to
:func:`tfmm.data.manifest.read_manifest`). Captions have no label: they train the pair tasks,
``matching`` (with ``--negatives``) and ``contrastive``. Rows are the annotations, in order.
"""

from __future__ import annotations

import json
from typing import Optional

import pandas as pd
import tensorflow as tf

from tfmm.config import DataConfig
from tfmm.data.readers.base import Manifest
from tfmm.data.readers.tables import as_folder, manifest_from_frame, source_folder
from tfmm.data.validation import RowProblem


def load_json(path: str):
    with tf.io.gfile.GFile(path, "rb") as f:
        return json.loads(f.read().decode("utf-8-sig"))


def is_coco(path: str) -> bool:
    """Whether the ``.json`` file ``path`` is one JSON object with ``images`` and ``annotations``."""
    try:
        data = load_json(path)
    except ValueError:  # JSON lines, or not JSON at all
        return False
    return isinstance(data, dict) and "images" in data and "annotations" in data


def read_coco(path: str, config: DataConfig = DataConfig(), *, root: Optional[str] = None,
              require_labels: bool = False) -> Manifest:
    """Reads COCO caption annotations into a :class:`~tfmm.data.manifest.Manifest` (no labels).

    Raises:
        ValueError: not COCO captions (the message says what is missing), or
            ``require_labels`` (captions have none: use a pair task).

    Example:
        >>> m = read_coco("annotations/captions_val.json", root="val_images")
        >>> len(m)  # one row per caption: about 5 per COCO image
    """
    if require_labels:
        raise ValueError(f"{path}: COCO captions have no labels; train them with --task contrastive, or "
                         "--task matching --negatives N")
    try:
        data = load_json(path)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected COCO captions, a JSON object with lists 'images' "
                         f"({{id, file_name}}) and 'annotations' ({{image_id, caption}}); found {found}")
    files = {img.get("id"): str(img.get("file_name", "")) for img in data["images"] if isinstance(img, dict)}
    rows, problems = [], []
    for row, ann in enumerate(data["annotations"]):
        where = f"annotation {row}" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            problems.append(RowProblem(path, row, "", f"{where}: expected a JSON object; received "
                                                      f"{type(ann).__name__}"))
        elif ann.get("image_id") not in files:
            problems.append(RowProblem(path, row, "", f"{where}: image_id {ann.get('image_id')!r} is not in "
                                                      "'images'"))
        else:
            caption = ann.get("caption")
            rows.append({"_row": row, "image": files[ann["image_id"]],
                         "text": "" if caption is None else str(caption).strip()})
    root = as_folder(root) if root else source_folder(path)
    df = pd.DataFrame(rows, columns=["_row", "image", "text"])
    return manifest_from_frame(df, source=path, root=root, base=root, require_labels=False, problems=problems,
                               columns={"image": "image", "text": "text", "label": "label"})
