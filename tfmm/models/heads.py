"""Task heads: the layers after fusion, with each task's loss and metrics."""

from __future__ import annotations

import keras

from tfmm.models import pair_heads

HEAD_TASKS = ("classification", "binary", "multilabel")


def _check_task(task: str) -> None:
    if task not in HEAD_TASKS:
        raise ValueError(f"task must be one of {list(HEAD_TASKS)} for a dense head; received {task!r}")


def output_units(task: str, num_classes: int) -> int:
    """Width of the head's output: 1 for binary, else one unit per class."""
    if task in pair_heads.TASK_HEADS:  # matching, contrastive: see tfmm.tasks
        return pair_heads.output_units(task, num_classes)
    _check_task(task)
    if task == "binary":
        if num_classes != 2:
            raise ValueError(f"task 'binary' needs exactly 2 labels; received {num_classes}")
        return 1
    if num_classes < 2:
        raise ValueError(f"task {task!r} needs at least 2 labels; received {num_classes}")
    return num_classes


def head_layers(task: str, num_classes: int, *, hidden_dim: int, dropout: float) -> list:
    """Dropout -> [hidden Dense] -> output Dense (softmax or sigmoid), in order.

    The output layer is kept in float32 so mixed precision stays numerically safe.
    """
    units = output_units(task, num_classes)
    activation = "softmax" if task == "classification" else "sigmoid"
    layers = [keras.layers.Dropout(dropout, name="fusion_dropout")]
    if hidden_dim:
        layers += [
            keras.layers.Dense(hidden_dim, activation="relu", name="head_hidden"),
            keras.layers.Dropout(dropout, name="head_dropout"),
        ]
    layers.append(keras.layers.Dense(units, activation=activation, dtype="float32", name="scores"))
    return layers


def loss_for(task: str):
    """The loss matching the head's output and the dataset's label encoding."""
    if task in pair_heads.TASK_HEADS:
        return pair_heads.loss_for(task)
    _check_task(task)
    if task == "classification":
        return keras.losses.CategoricalCrossentropy()
    return keras.losses.BinaryCrossentropy()


def metrics_for(task: str, num_classes: int) -> list:
    """Keras metrics shown by ``fit``: accuracy, precision, recall and macro F1."""
    if task in pair_heads.TASK_HEADS:
        return pair_heads.metrics_for(task)
    _check_task(task)
    if task == "classification":
        return [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.Precision(top_k=1, name="precision"),
            keras.metrics.Recall(top_k=1, name="recall"),
            keras.metrics.F1Score(average="macro", name="f1"),
        ]
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.F1Score(average="macro", threshold=0.5, name="f1"),
    ]
