"""Tasks: what a trained model of each task means beyond its head.

Owns decision thresholds and serving outputs (``thresholds``), task metrics on numpy arrays
and top-k (``metrics``), and the contrastive towers, retrieval and zero-shot helpers
(``contrastive``). May import ``tfmm.models``, ``tfmm.data``, ``tfmm.run_dir``,
``tfmm.config`` and ``tfmm.files``.
"""
