"""Models: Keras layers and the fused image + text model.

Owns the image encoders (``vision``), the KerasHub text backbones and text preprocessors
(``text``), TF-Hub encoders and their export (``hub``, ``hub_export``), fusion (``fusion``),
the task heads with their losses and ``fit`` metrics (``heads``, ``pair_heads``) and
``build.build_model``. May import ``tfmm.data``, ``tfmm.config`` and ``tfmm.files``;
``tensorflow_hub`` and ``keras_hub`` are imported only here, where used.
"""
