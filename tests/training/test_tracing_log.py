import logging

import keras
import numpy as np
import tensorflow as tf

import tfmm  # noqa: F401  (installs the filter, as every user's import does)
from tfmm.training.tracing_log import KerasStepRetracingFilter, quiet_new_model_retracing


def _retracing(caplog):
    return [r for r in caplog.records if r.name == "tensorflow" and "retracing" in r.getMessage()]


def test_many_new_models_do_not_warn_of_retracing_but_a_retraced_function_does(caplog):
    quiet_new_model_retracing()  # idempotent: still one filter
    assert sum(isinstance(f, KerasStepRetracingFilter) for f in logging.getLogger("tensorflow").filters) == 1
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for _ in range(7):  # each model traces its own predict step once
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            model.predict(np.zeros((4, 3)), verbose=0)
        assert _retracing(caplog) == []

        @tf.function
        def user_function(x):
            return x * 2

        for n in range(1, 9):  # a user's function traced again for every new shape
            user_function(tf.zeros([n]))
    messages = [r.getMessage() for r in _retracing(caplog)]
    assert messages and all("user_function" in m for m in messages)


def test_the_filter_matches_only_keras_step_functions():
    def record(message):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    keep = KerasStepRetracingFilter().filter
    assert not keep(record("5 out of the last 5 calls to <function TensorFlowTrainer.make_predict_function."
                           "<locals>.one_step_on_data_distributed at 0x1> triggered tf.function retracing."))
    assert not keep(record("6 out of the last 9 calls to <function TensorFlowTrainer.make_train_function."
                           "<locals>.multi_step_on_iterator at 0x1> triggered tf.function retracing."))
    assert keep(record("5 out of the last 5 calls to <function f at 0x1> triggered tf.function retracing."))
    assert keep(record("one_step_on_data_distributed: some other warning"))
