"""Data: manifests in, ``tf.data.Dataset`` out.

Owns reading data sources and their label vocabularies (``manifest``, with one reader per
source shape in ``readers``: tables incl. Parquet, class folders with caption files, HF
imagefolder, COCO captions, prepared folders; local or on any ``tf.io.gfile`` filesystem), label encodings (``labels``: one-hot, index, multi-hot, pair
ids; the tasks choose one), row checks (``validation``), image header checks and decoding
shared by the pipeline and the serving graph (``images``), the input pipeline
(``pipeline.make_dataset``), prepared TFRecords (``tfrecords``, ``tfmm prepare``), the core-op
WordPiece tokenizer (``tokenizer``), negatives for positive image-text pairs (``pairs``) and the demo data
(``demo_data``). May import ``tfmm.config`` and ``tfmm.files`` only: it is the bottom layer.
"""
