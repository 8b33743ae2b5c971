"""Data: manifests in, ``tf.data.Dataset`` out.

Owns reading manifests (CSV/TSV/JSONL, DataFrames, prepared folders) and their label
vocabularies (``manifest``), label encodings (``labels``: one-hot, index, multi-hot, pair
ids; the tasks choose one), row checks (``validation``), image header checks and decoding
shared by the pipeline and the serving graph (``images``), the input pipeline
(``pipeline.make_dataset``), prepared TFRecords (``tfrecords``, ``tfmm prepare``), the core-op
WordPiece tokenizer (``tokenizer``), negatives for positive image-text pairs (``pairs``) and the demo data
(``demo_data``). May import ``tfmm.config`` and ``tfmm.files`` only: it is the bottom layer.
"""
