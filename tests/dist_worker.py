"""A fresh Python process for the distributed tests (tf.distribute needs its own process).

    python tests/dist_worker.py cli [--logical-cpus N] [--dump-weights FILE.npz] [--pause-at E,S,FILE] -- train ARGS...
        `tfmm train ARGS` (tfmm.cli.main), optionally on N logical CPU devices, optionally
        saving the trained weights (every worker's, chief or not) to FILE.npz, optionally
        stopping mid-training: at the start of step S of epoch E (both from 0), once the
        backups of the steps before it are written, it creates FILE and waits there to be
        killed (so a test kills it at a known point instead of racing the training).
    python tests/dist_worker.py keras-bug
        Under the MultiWorkerMirroredStrategy of TF_CONFIG, fits a tiny dict-input model three
        times: unpatched Keras, with tfmm.compat's "symbolic_build" fix only, with both fixes;
        prints one JSON line per attempt: {"fixes": [...], "ok": bool, "error": "..."}.
    python tests/dist_worker.py shards MANIFEST
        Under the MultiWorkerMirroredStrategy of TF_CONFIG, distributes tfmm.data.make_dataset
        over MANIFEST (shuffled, global batch 16; a stand-in tokenizer turns the caption,
        the row number, into token_ids) and prints {"rows": [[row, ...] per step]}: the rows
        this worker got.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--logical-cpus", type=int, default=0)
    parser.add_argument("--dump-weights")
    parser.add_argument("--pause-at")
    split = argv.index("--")
    args, cli_args = parser.parse_args(argv[:split]), argv[split + 1:]
    import tensorflow as tf

    if args.logical_cpus:  # before any op runs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    if args.dump_weights or args.pause_at:
        import importlib

        import numpy as np

        train_module = importlib.import_module("tfmm.training.train")
        original = train_module.train

        def train_and_dump(*a, **k):
            if args.pause_at:
                epoch, step, marker = args.pause_at.split(",", 2)
                k["callbacks"] = list(k.get("callbacks") or []) + [_pause_at(int(epoch), int(step), marker)]
            result = original(*a, **k)
            if args.dump_weights:
                np.savez(args.dump_weights, *result.model.get_weights())
            return result

        train_module.train = train_and_dump
    from tfmm.cli import main

    return main(cli_args)


def _pause_at(epoch: int, step: int, marker: str):
    """A callback that blocks training at the start of ``step`` of ``epoch``, after creating ``marker``.

    tfmm puts its backup callback after the extra callbacks, so the backups due after the
    previous steps are on disk by then."""
    import time

    import keras

    class PauseAt(keras.callbacks.Callback):
        current = None

        def on_epoch_begin(self, e, logs=None):
            self.current = e

        def on_train_batch_begin(self, batch, logs=None):
            if (self.current, batch) == (epoch, step):
                with open(marker, "w") as f:
                    f.write(f"paused at epoch {epoch} step {step}\n")
                while True:  # until the test kills this process
                    time.sleep(1)

    return PauseAt()


def keras_bug() -> int:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: before any op
    import keras
    import numpy as np

    from tfmm.training import keras_patches

    rng = np.random.default_rng(0)
    x = {"a": rng.random((32, 4), dtype=np.float32), "b": rng.integers(0, 5, (32, 3)).astype("int32")}
    y = rng.random((32, 1), dtype=np.float32)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).with_options(options)
    for fixes in ([], ["symbolic_build"], ["symbolic_build", "scalar_reduce"]):
        if fixes:
            keras_patches.apply_distribute_fixes(fixes)
        with strategy.scope():
            a = keras.Input((4,), name="a")
            b = keras.Input((3,), name="b", dtype="int32")
            h = keras.layers.Concatenate()([a, keras.layers.Flatten()(keras.layers.Embedding(5, 2)(b))])
            model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(h))
            model.compile("adam", "mse", metrics=["mae"])
        try:
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
            print(json.dumps({"fixes": fixes, "ok": True, "error": ""}), flush=True)
        except Exception as e:  # noqa: BLE001 - the point is to report it
            print(json.dumps({"fixes": fixes, "ok": False, "error": f"{type(e).__name__}: {e}"[:300]}), flush=True)
    return 0


def shards(manifest_path: str) -> int:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: before any op
    from tfmm.data.manifest import build_label_vocab, read_manifest
    from tfmm.data.pipeline import make_dataset
    from tfmm.config import DataConfig

    def row_tokenizer(texts):  # caption "17" -> token_ids [[17]]
        ids = tf.strings.to_number(texts, out_type=tf.int32)[:, None]
        return {"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": tf.ones_like(ids)}

    config = DataConfig(image_size=32)
    manifest = read_manifest(manifest_path, config)
    ds = make_dataset(manifest, config=config, preprocessor=row_tokenizer, labels=build_label_vocab(manifest),
                             modalities="text", batch_size=16, shuffle=True, seed=42)
    rows = []
    for features, _ in strategy.experimental_distribute_dataset(ds):
        local = strategy.experimental_local_results(features["token_ids"])[0]
        rows.append(local.numpy()[:, 0].tolist())
    print(json.dumps({"rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    runners = {"cli": lambda: run_cli(rest), "keras-bug": keras_bug, "shards": lambda: shards(rest[0])}
    sys.exit(runners[mode]())
