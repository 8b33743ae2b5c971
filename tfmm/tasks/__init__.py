"""Tasks: everything that differs between classification, binary, multilabel, matching and
contrastive, one module and one :class:`~tfmm.tasks.base.Task` subclass each.

``TASKS`` maps each task name to its class; callers hold a task object
(``get_task(config.model.task)``) and call its methods, never comparing task names.
Shared by the tasks: numpy metrics (``metrics``), decision thresholds (``thresholds``) and
zero-shot classification (``zero_shot``). :func:`build_model` joins the encoders of
:mod:`tfmm.models.build` to the task's head.

May import ``tfmm.models``, ``tfmm.data``, ``tfmm.run_dir``, ``tfmm.config`` and ``tfmm.files``.
"""

from __future__ import annotations

import keras

from tfmm.config import RunConfig
from tfmm.models.build import assemble_model
from tfmm.tasks.base import Evaluation, Task
from tfmm.tasks.binary import BinaryTask
from tfmm.tasks.classification import ClassificationTask
from tfmm.tasks.contrastive import ContrastiveTask
from tfmm.tasks.matching import MatchingTask
from tfmm.tasks.multilabel import MultilabelTask

TASKS = {
    "classification": ClassificationTask,
    "binary": BinaryTask,
    "multilabel": MultilabelTask,
    "matching": MatchingTask,
    "contrastive": ContrastiveTask,
}


def get_task(name: str) -> Task:
    """The task object for ``name`` (``config.model.task``, ``--task``).

    Raises:
        ValueError: an unknown name (the message lists the tasks).
    """
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}; received {name!r}")
    return TASKS[name]()


def build_model(config: RunConfig) -> keras.Model:
    """Builds the fused model described by ``config``: its encoders and its task's head.

    Args:
        config: a :class:`~tfmm.config.RunConfig` whose ``model.num_classes`` is set
            (``tfmm.train`` sets it from the label vocabulary; contrastive needs none).

    Returns:
        A functional ``keras.Model`` whose inputs are a dict with ``image``
        (``[B, S, S, 3]`` float32 in ``[0, 255]``) and/or ``token_ids``, ``segment_ids``,
        ``padding_mask`` (``[B, L]`` int32), matching the dataset's features.

    Raises:
        ValueError: ``num_classes`` does not fit the task (unset, or a wrong label count).

    Example:
        >>> cfg = RunConfig().replace(model={"num_classes": 3, "image_weights": "none",
        ...                                  "modalities": "image"}, data={"image_size": 32})
        >>> model = build_model(cfg)
    """
    task = get_task(config.model.task)
    try:
        task.output_units(config.model.num_classes)
    except ValueError as e:
        if config.model.num_classes > 0:
            raise
        raise ValueError(
            f"model.num_classes must be set (> 0) before building; received {config.model.num_classes}. "
            "tfmm.train sets it from the training labels."
        ) from e
    return assemble_model(config, task.build_head)


__all__ = ["TASKS", "Task", "Evaluation", "get_task", "build_model"]
