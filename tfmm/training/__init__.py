"""Training: a run directory from manifests and a config.

Owns ``train.train`` (manifests -> build and compile -> fit -> the run directory), strategy
selection (``distribute``), mixed precision (``precision``), resuming (``resume``), the frozen
encoders' feature cache (``feature_cache``) and its augmented image views
(``feature_views``), TensorBoard callbacks (``callbacks``),
checkpoints (``checkpoint``) and the version-gated Keras fixes (``keras_patches``). May import
``tfmm.tasks``, ``tfmm.models``, ``tfmm.data``, ``tfmm.run_dir``, ``tfmm.plots``,
``tfmm.config`` and ``tfmm.files``.
"""
