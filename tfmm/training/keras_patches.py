"""Version-gated fixes for Keras 3 ``model.fit`` under ``tf.distribute`` strategies.

Keras 3.15's TensorFlow trainer breaks in two places when a model is fit under
``MultiWorkerMirroredStrategy`` with more than one worker (keras-team/keras #20329, #20585; tensorflow/tensorflow #72388):

1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first distributed batch with
   ``strategy.reduce("MEAN", batch, axis=None)`` only to read its shapes and dtypes. A
   collective reduce of a dict of ``PerReplica`` values fails with
   ``ValueError: Attempt to convert a value ({... PerReplica ...}) ... to a Tensor``
   (keras-team/keras#20329, #20585; string inputs fail the same way under
   MirroredStrategy, keras#21172). Fix: take the first local replica's batch.
2. ``reduce_per_replica`` reduces every logged metric with ``strategy.reduce("MEAN", v,
   axis=0)``; scalars have no axis 0: ``Invalid reduction dimension 0 for input with 0
   dimensions`` (tensorflow/tensorflow#72388). Fix: reduce scalars with ``axis=None``.

:func:`apply_distribute_fixes` patches exactly those two functions, and only on the Keras
versions listed in ``BROKEN_KERAS``. ``tests/test_compat.py`` checks that the pinned Keras
still fails without the patch; when it stops failing, delete this module and its call in
:mod:`tfmm.training.train`.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

# Half-open range [low, high) of Keras versions known to need the fixes.
BROKEN_KERAS = ((3, 0), (3, 16))

_applied = set()


def keras_version(version: str = None) -> tuple:
    """``"3.15.1"`` -> ``(3, 15)`` (major, minor) for the installed or a given Keras version."""
    parts = (version or keras.__version__).split(".")
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts[:2])


def needs_distribute_fixes(version: str = None) -> bool:
    """Whether this Keras version is in ``BROKEN_KERAS`` (the fixes apply)."""
    low, high = BROKEN_KERAS
    return low <= keras_version(version) < high


def _first_local_value(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Fixed ``TensorFlowTrainer._maybe_symbolic_build``: builds from one replica's batch."""
    from keras.src import tree

    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            # Only shapes and dtypes are read: any one replica's batch will do, and no
            # cross-replica reduce (collective, float-only) is needed.
            data_batch = tree.map_structure(
                lambda v: _first_local_value(self.distribute_strategy, v), batch
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _make_reduce_per_replica(original, trainer_module):
    def reduce_per_replica(values, strategy, reduction):
        """Fixed ``reduce_per_replica``: multi-worker MEAN of a scalar uses ``axis=None``."""
        from keras.src import tree

        if reduction in ("auto", "mean") and trainer_module._collective_all_reduce_multi_worker(strategy):

            def _reduce(v):
                axis = None if getattr(v, "shape", None) is not None and v.shape.rank == 0 else 0
                return strategy.reduce("MEAN", v, axis=axis)

            return tree.map_structure(_reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    return reduce_per_replica


def _patch_symbolic_build(trainer_module) -> None:
    trainer_module.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build


def _patch_scalar_reduce(trainer_module) -> None:
    trainer_module.reduce_per_replica = _make_reduce_per_replica(
        trainer_module.reduce_per_replica, trainer_module
    )


FIXES = {"symbolic_build": _patch_symbolic_build, "scalar_reduce": _patch_scalar_reduce}


def apply_distribute_fixes(fixes=tuple(FIXES), *, force: bool = False) -> bool:
    """Patches Keras' TensorFlow trainer for multi-replica ``fit`` (idempotent).

    Args:
        fixes: names from ``FIXES`` to apply (default: all; tests apply one at a time to
            show each is still needed).
        force: patch even when the Keras version is outside ``BROKEN_KERAS``.

    Returns:
        True when the requested fixes are in place after the call.

    Raises:
        ValueError: an unknown fix name.

    Example:
        >>> from tfmm import compat
        >>> compat.apply_distribute_fixes()
        True
    """
    unknown = set(fixes) - set(FIXES)
    if unknown:
        raise ValueError(f"fixes must be among {sorted(FIXES)}; received {sorted(unknown)}")
    if keras.backend.backend() != "tensorflow":
        return False
    if not (force or needs_distribute_fixes()):
        logger.debug("keras %s is outside %s: distribute fixes not applied", keras.__version__, BROKEN_KERAS)
        return False
    from keras.src.backend.tensorflow import trainer as trainer_module

    for name in fixes:
        if name not in _applied:
            FIXES[name](trainer_module)
            _applied.add(name)
            logger.debug("applied keras fix %r for tf.distribute (keras %s)", name, keras.__version__)
    return True
