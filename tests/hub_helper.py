"""Subprocess helper for tests/models/test_hub.py (each mode needs a fresh Python process).

    python tests/hub_helper.py clean-load PREPROCESS ENCODER OUT.npz
        Loads the TF-Hub pair importing only tensorflow, tensorflow_text and tensorflow_hub,
        and saves the encoder outputs for a few strings (plus the imported module names).
    python tests/hub_helper.py mirrored PREPROCESS ENCODER OUT.json
        Splits the CPU into 2 logical devices, fits a HubTextEncoder model for one epoch under
        MirroredStrategy, and reports whether the hub variables changed and stayed in sync.

Also the tiny KerasHub dual encoder presets the CLIP / SigLIP tests save themselves
(:func:`make_tiny_clip_preset`, :func:`make_tiny_siglip_preset`: one layer per tower, width 16,
32 px images, a tiny vocabulary).
"""

import json
import sys

TEXTS = ["The cat sat on the mat!", "a red circle, a blue square", ""]


DUAL_ENCODER_WORDS = ("a photo of the one this thing is painted colour picture red green blue circle "
                      "square triangle shape").split()
_TOWER = dict(num_layers=1, num_heads=2, intermediate_dim=32)


def _clip_vocabulary():
    """CLIP's BPE alphabet (every byte, alone and word-final ``</w>``), a few merges, and the two
    special tokens last: ``<|endoftext|>`` must be the largest id (CLIP pools it by argmax)."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()[1]
    merges = ["r e", "re d</w>", "c i", "ci r", "b l", "bl u", "blu e</w>", "o f</w>"]
    tokens = list(alphabet) + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges]
    vocabulary = {}
    for token in tokens + ["<|startoftext|>", "<|endoftext|>"]:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary, merges


def make_tiny_clip_preset(folder, image_size=32, sequence_length=16):
    """Writes a tiny CLIP preset (backbone, CLIPTokenizer, CLIPImageConverter) to ``folder``."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(1)
    vocabulary, merges = _clip_vocabulary()
    backbone = keras_hub.models.CLIPBackbone(
        vision_encoder=keras_hub.models.CLIPVisionEncoder(
            patch_size=8, hidden_dim=16, image_shape=(image_size, image_size, 3), **_TOWER),
        text_encoder=keras_hub.models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary), embedding_dim=16, hidden_dim=16,
            max_sequence_length=sequence_length, **_TOWER),
        projection_dim=16,
    )
    backbone.save_to_preset(folder)
    keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges).save_to_preset(folder)
    mean, std = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)  # CLIP's normalization
    keras_hub.layers.CLIPImageConverter(
        image_size=(image_size, image_size), scale=[1 / (255 * s) for s in std],
        offset=[-m / s for m, s in zip(mean, std)]).save_to_preset(folder)
    return str(folder)


def make_tiny_siglip_preset(folder, image_size=32, sequence_length=16):
    """Writes a tiny SigLIP preset: backbone, SigLIPTokenizer (a SentencePiece model trained
    here, offline, on a few words; ``</s>`` is its end and pad token) and SigLIPImageConverter."""
    import io

    import keras
    import keras_hub
    import sentencepiece

    keras.utils.set_random_seed(2)
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(DUAL_ENCODER_WORDS)] * 8), model_writer=proto, vocab_size=48,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>",
        bos_piece="<s>", eos_piece="</s>", hard_vocab_limit=False, minloglevel=2)
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=proto.getvalue())
    backbone = keras_hub.models.SigLIPBackbone(
        vision_encoder=keras_hub.models.SigLIPVisionEncoder(
            patch_size=8, hidden_dim=16, image_shape=(image_size, image_size, 3), **_TOWER),
        text_encoder=keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(), embedding_dim=16, hidden_dim=16,
            max_sequence_length=sequence_length, **_TOWER),
    )
    backbone.save_to_preset(folder)
    tokenizer.save_to_preset(folder)
    keras_hub.layers.SigLIPImageConverter(
        image_size=(image_size, image_size), scale=1 / 127.5, offset=-1.0).save_to_preset(folder)
    return str(folder)


def clean_load(preprocess, encoder, out):
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    preprocessor = hub.load(preprocess)
    bert = hub.load(encoder)
    inputs = preprocessor(tf.constant(TEXTS))
    outputs = bert(inputs, training=False)
    np.savez(
        out,
        input_word_ids=inputs["input_word_ids"].numpy(),
        pooled_output=outputs["pooled_output"].numpy(),
        sequence_output=outputs["sequence_output"].numpy(),
        modules=np.array(sorted(sys.modules)),
        texts=np.array(TEXTS),
    )


def mirrored(preprocess, encoder, out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    from tfmm.models.hub import HUB_INPUT_KEYS, HubTextEncoder, HubTextPreprocessor, hub_inputs_from_canonical

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    preprocessor = HubTextPreprocessor(preprocess, seq_length=12)
    texts = ["the cat sat", "a dog ran", "red circle", "blue square"] * 4
    labels = np.array([0, 1, 0, 1] * 4)
    # Tokenize in tf.data: string model inputs fail under MirroredStrategy (PITFALLS.md).
    dataset = (
        tf.data.Dataset.from_tensor_slices((texts, labels))
        .batch(8)
        .map(lambda text, label: (hub_inputs_from_canonical(preprocessor(text)), label))
    )
    with strategy.scope():
        inputs = {k: keras.Input(shape=(12,), dtype="int32", name=k) for k in HUB_INPUT_KEYS}
        layer = HubTextEncoder(preprocess, encoder, seq_length=12)
        logits = keras.layers.Dense(2)(layer(inputs)["pooled_output"])
        model = keras.Model(inputs, logits)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    before = [v.numpy().copy() for v in layer.encoder.trainable_variables]
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    after = layer.encoder.trainable_variables
    report = {
        "replicas": strategy.num_replicas_in_sync,
        "variable_type": type(after[0]).__name__,
        "changed": sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, after)),
        "total": len(after),
        "in_sync": all(
            np.array_equal(v.values[0].numpy(), v.values[1].numpy()) for v in after
        ),
        "loss": float(history.history["loss"][-1]),
    }
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"clean-load": clean_load, "mirrored": mirrored}[mode](*args)
