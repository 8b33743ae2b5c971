"""Hyperparameter search with KerasTuner (``tfmm tune``): each trial is a tfmm training run.

``space`` says what is searched, ``tuner`` is the KerasTuner ``Tuner`` (imported only when a
search runs: KerasTuner is the optional ``tfmm[tune]`` extra), ``records`` writes the results,
``runner`` ties them together (:func:`search`, :func:`tune`).
"""

from tfmm.tuning.runner import TuneResult, search, tune
from tfmm.tuning.space import SearchSpace, build_space, default_space

__all__ = ["SearchSpace", "TuneResult", "build_space", "default_space", "search", "tune"]
