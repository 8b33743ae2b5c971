"""Evaluation: metrics, reports and predictions of a trained run.

Owns ``evaluate.evaluate`` / ``evaluate.predict`` (with the modality ablation), the scores
and ``metrics.json`` numbers (``metrics``), the multilabel / matching / contrastive
evaluation (``task_eval``), ROC and PR curves (``curves``) and the report files
(``reports``). May import everything below it: ``tfmm.training``, ``tfmm.tasks``,
``tfmm.models``, ``tfmm.data``, ``tfmm.run_dir``, ``tfmm.plots``, ``tfmm.config``, ``tfmm.files``.
"""
