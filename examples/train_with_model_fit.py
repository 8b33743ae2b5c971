"""Train a fused image+text classifier with plain `model.fit`, using tfmm's building blocks.

Run it as is (it writes the demo data first) or point it at your own manifests:

    python examples/train_with_model_fit.py
    python examples/train_with_model_fit.py --train data/train.csv --val data/val.csv --image-size 224

Each manifest row has `image` (path relative to the manifest), `text` and `label`.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

import tfmm  # noqa: E402
from tfmm.data.demo_data import write_demo_dataset  # noqa: E402
from tfmm.data.manifest import build_label_vocab, check_manifest
from tfmm.data.pipeline import make_dataset
from tfmm.models.text import load_text_preprocessor  # noqa: E402
from tfmm.training.train import compile_model  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--train", help="training manifest (default: generate the demo data)")
parser.add_argument("--val", help="validation manifest")
parser.add_argument("--image-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--out", default="runs/model_fit_example")
args = parser.parse_args()

if args.train is None:
    paths = write_demo_dataset("runs/model_fit_example_data", n_train=900, n_val=180, n_test=180)
    args.train, args.val = paths["train"], paths["val"]

# 1. Configuration: a frozen dataclass, validated on creation.
config = tfmm.RunConfig().replace(
    data={"image_size": args.image_size, "sequence_length": 16},
    model={"text_encoder": "minilm", "freeze_text": True, "image_weights": "none"},
    train={"epochs": args.epochs, "batch_size": 32, "learning_rate": 1e-4},
)

# 2. Data: read + validate manifests (every bad row is reported), label vocabulary, tf.data.
train_manifest = check_manifest(tfmm.read_manifest(args.train, config.data))
labels = build_label_vocab(train_manifest)
val_manifest = check_manifest(tfmm.read_manifest(args.val, config.data), labels=labels)
preprocessor = load_text_preprocessor(config.model.text_encoder, config.data.sequence_length)
common = dict(config=config.data, preprocessor=preprocessor, labels=labels, batch_size=config.train.batch_size)
train_ds = make_dataset(train_manifest, shuffle=True, seed=config.train.seed, **common)
val_ds = make_dataset(val_manifest, **common)

# 3. Model: a Keras functional model; compile with AdamW + warmup/cosine and F1/precision/recall.
config = config.replace(model={"num_classes": len(labels)})
model = tfmm.build_model(config)
compile_model(model, config, steps_per_epoch=len(train_ds))
model.summary(expand_nested=False)

# 4. Train with plain model.fit and any Keras callbacks you like.
os.makedirs(args.out, exist_ok=True)
model.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs, shuffle=False,  # shuffled by tf.data
          callbacks=[keras.callbacks.TensorBoard(os.path.join(args.out, "logs"))])

# 5. Save: a standard .keras file (reload with keras.models.load_model after `import tfmm`).
model.save(os.path.join(args.out, "model.keras"))
print("validation:", model.evaluate(val_ds, verbose=0, return_dict=True))
print(f"saved {os.path.join(args.out, 'model.keras')}")
