"""Serving: SavedModel exports for TF Serving, and talking to them.

Owns ``export.export_for_serving`` (archive, version folder, assets, publish), the checks of
an export (``export_check``, and ``standalone_check``, which is run as a script from its
source file in a fresh process), the SavedModel layout and loading (``saved_model``),
REST/gRPC bodies and warmup records (``protocol``) and the TF Serving op table
(``serving_compat`` with ``tf_serving_ops.json``). May import every layer below it; nothing
but ``tfmm.cli`` and ``tfmm.demo`` imports it.
"""
