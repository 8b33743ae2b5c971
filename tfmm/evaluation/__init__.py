"""Evaluation: metrics, reports and predictions of a trained run.

Owns ``evaluate.evaluate`` / ``evaluate.predict`` (dispatched to the run's task, which owns
the metrics and prediction records), the modality ablation (``ablation``) and the report
files and tables (``reports``). May import everything below it: ``tfmm.training``,
``tfmm.tasks``, ``tfmm.models``, ``tfmm.data``, ``tfmm.run_dir``, ``tfmm.plots``,
``tfmm.config``, ``tfmm.files``.
"""
