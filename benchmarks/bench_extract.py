"""Feature extraction for the cache vs a bare VGG16 forward pass (goal: >= 0.8x).

Measures images/s of

- a bare forward pass: ``tf.function(encoder(x, training=False))`` of the VGG16 image
  encoder at 224 on one in-memory batch of decoded images, repeated (no input pipeline);
- ``tfmm.training.feature_cache.extract_features``: the same encoder and batch size over a JPEG manifest
  (read, decode, resize in the tf.data pipeline, ``model.predict``);
- ``tfmm.training.feature_cache.cached_features`` on an empty cache, end to end: hashing the weights and
  every file, extracting, writing ``features.npy`` (what ``tfmm train`` pays once).

Run: ``python benchmarks/bench_extract.py`` (about 2-4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import common  # noqa: F401  (sets the environment and sys.path first)
from common import (alternate, best, default_config, print_header, print_ratio, print_table, timed,
                    write_jpeg_dataset)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="JPEGs to extract (default: 48)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default: 4)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tfmm.training import feature_cache
    from tfmm.data.images import decode_image
    from tfmm.data.manifest import read_manifest
    from tfmm.models.vision import build_image_encoder

    print_header("bench_extract: feature-cache extraction vs bare VGG16 forward")
    work = tempfile.mkdtemp(prefix="tfmm_bench_extract_")
    n, b = args.images, args.batch_size
    config = default_config(modalities="image", freeze_image=True)
    manifest = read_manifest(write_jpeg_dataset(os.path.join(work, "data"), n, size=256), config.data)
    keras.utils.set_random_seed(0)
    encoder = build_image_encoder("vgg16", weights="none", image_size=224, trainable=False)
    # The first b images of the manifest, decoded once: the same pixels, without a pipeline.
    batch = tf.stack([decode_image(open(p, "rb").read(), 224) for p in manifest.frame["image"][:b]])
    forward = tf.function(lambda x: encoder(x, training=False))

    def bare():
        for _ in range(-(-n // b)):  # as many batches as the manifest holds
            forward(batch).numpy()

    def extract():
        feature_cache.extract_features(encoder, "image", manifest, config=config, batch_size=b, verbose=0)

    counter = iter(range(10 ** 6))

    def cold_cache():
        feature_cache.cached_features(encoder, "image", manifest, config=config, batch_size=b, verbose=0,
                              cache_dir=os.path.join(work, f"cache{next(counter)}"))

    forward(batch)  # trace
    feature_cache.extract_features(encoder, "image", manifest.__class__(manifest.frame.head(b), "warm", manifest.root),
                           config=config, batch_size=b, verbose=0)
    times = alternate(args.rounds, bare_forward=bare, extract_features=extract, cached_features_cold=cold_cache)
    bare_rate = -(-n // b) * b / best(times["bare_forward"])
    rows = []
    for name, label in (("bare_forward", "bare VGG16 forward, in-memory batch"),
                        ("extract_features", "extract_features (JPEG pipeline + predict)"),
                        ("cached_features_cold", "cached_features, empty cache (hash + extract + save)")):
        rate = (bare_rate if name == "bare_forward" else n / best(times[name]))
        rows.append([label, rate, rate / bare_rate, " ".join(f"{t:.2f}" for t in times[name])])
    key_seconds = min(timed(feature_cache.cache_key, "image", encoder, manifest, config)[0] for _ in range(3))
    print(f"\nVGG16 at 224x224, {n} JPEGs (256x256), batch {b}, best of {args.rounds} alternating rounds")
    print_table(["what", "images/s", "x bare", "seconds per round"], rows)
    print(f"cache key alone (sha256 of the encoder's weights and of {n} files): {key_seconds:.2f} s")
    print()
    print_ratio("extract_vs_bare_forward", rows[1][2], ">= 0.8")
    print_ratio("cold_cache_vs_bare_forward", rows[2][2], ">= 0.8; adds hashing and saving, paid once")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
