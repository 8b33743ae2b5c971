"""TensorFlow's retracing warning, which a process that builds many Keras models trips by design.

TensorFlow counts the traces of a ``tf.function`` by the Python code it wraps, so the
train/test/predict step functions of *different* Keras models count as one function. After
five models have each traced their own step once in one process (the heads of a head
ensemble, a ``tfmm tune`` search, evaluating several runs from a script), TensorFlow logs
"5 out of the last 5 calls to <function TensorFlowTrainer.make_predict_function.<locals>
.one_step_on_data_distributed> triggered tf.function retracing", though no model retraced.

:func:`quiet_new_model_retracing` drops that warning for Keras' step functions only; the
warning about any other function (a user's own ``tf.function`` traced again and again) shows
as before.
"""

from __future__ import annotations

import logging

RETRACING = "triggered tf.function retracing"
# The per-model step functions of Keras' TensorFlow trainer (keras/src/backend/tensorflow/trainer.py).
KERAS_STEPS = ("one_step_on_data", "one_step_on_iterator", "multi_step_on_iterator")


class KerasStepRetracingFilter(logging.Filter):
    """Drops TensorFlow's retracing warning when the function it names is a Keras step function."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (RETRACING in message and any(step in message for step in KERAS_STEPS))


def quiet_new_model_retracing() -> None:
    """Adds :class:`KerasStepRetracingFilter` to the ``tensorflow`` logger (once per process)."""
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, KerasStepRetracingFilter) for f in tf_logger.filters):
        tf_logger.addFilter(KerasStepRetracingFilter())
