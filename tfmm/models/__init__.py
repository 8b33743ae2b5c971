"""Models: Keras layers and the fused image + text model.

Owns the image encoders (``vision``: keras.applications by name; ``efficientnet_lite`` with
its offline ImageNet weights read by the torch-free ``torch_weights``; ``hub_vision``: any
KerasHub image backbone), frozen and partially unfrozen encoders (``freezing``), the KerasHub text backbones and text preprocessors
(``text``), TF-Hub encoders and their export (``hub``, ``hub_export``), fusion (``fusion``),
the head layers and builders the tasks choose from (``heads``: the dense fusion head;
``pair_heads``: the matching and dual-encoder heads and the contrastive loss) and
``build.assemble_model`` (encoders joined to a task's head; ``tfmm.tasks.build_model`` picks
the head). May import ``tfmm.data``, ``tfmm.config`` and ``tfmm.files``;
``tensorflow_hub`` and ``keras_hub`` are imported only here, where used.
"""
