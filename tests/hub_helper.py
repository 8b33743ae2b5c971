"""Subprocess helper for tests/models/test_hub.py (each mode needs a fresh Python process).

    python tests/hub_helper.py clean-load PREPROCESS ENCODER OUT.npz
        Loads the TF-Hub pair importing only tensorflow, tensorflow_text and tensorflow_hub,
        and saves the encoder outputs for a few strings (plus the imported module names).
    python tests/hub_helper.py mirrored PREPROCESS ENCODER OUT.json
        Splits the CPU into 2 logical devices, fits a HubTextEncoder model for one epoch under
        MirroredStrategy, and reports whether the hub variables changed and stayed in sync.
"""

import json
import sys

TEXTS = ["The cat sat on the mat!", "a red circle, a blue square", ""]


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
