"""Does the input pipeline keep up with the model? (goal: it delivers >= 3x what a step eats)

Measures, in one process on this machine:

- images/s delivered by ``tfmm.data.pipeline.make_dataset`` (read JPEG, decode + resize to 224,
  tokenize the caption, batch, prefetch) over one shuffled epoch: decoding every epoch, from
  the in-memory cache (an epoch after the first), with ``deterministic=False``, and from a
  ``tfmm prepare`` TFRecord folder;
- images/s consumed by a training step of the default model (VGG16 at 224 + MiniLM, 64
  tokens, both trainable) on an in-memory batch;
- the same training steps fed by the pipeline inside ``model.fit`` (steps after the first
  of a fit call): if the pipeline never starves the model, this matches the in-memory rate.

Run: ``python benchmarks/bench_pipeline.py`` (about 3-5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import common  # noqa: F401  (sets the environment and sys.path first)
from common import (alternate, best, default_config, fit_step_seconds, print_header, print_ratio, print_table,
                    write_jpeg_dataset)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the manifest (default: 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (default: 8)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per round (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tfmm.data.manifest import build_label_vocab, read_manifest
    from tfmm.data.pipeline import make_dataset
    from tfmm.tasks import build_model
    from tfmm.data.tfrecords import prepare_dataset
    from tfmm.models.text import load_text_preprocessor
    from tfmm.training.train import compile_model

    print_header("bench_pipeline: input pipeline images/s vs default-model training images/s")
    work = tempfile.mkdtemp(prefix="tfmm_bench_pipeline_")
    manifest_path = write_jpeg_dataset(os.path.join(work, "data"), args.images, size=256)
    config = default_config()
    dc = config.data
    manifest = read_manifest(manifest_path, dc)
    labels = build_label_vocab(manifest)
    config = config.replace(model={"num_classes": len(labels)})
    preprocessor = load_text_preprocessor(config.model.text_encoder, dc.sequence_length)
    prepared = read_manifest(prepare_dataset(manifest, os.path.join(work, "tfrecords"), shards=4, verbose=0))

    def pipeline(source, batch_size=32, **options):
        return make_dataset(
            source, config=dataclasses.replace(dc, **options), preprocessor=preprocessor, labels=labels,
            batch_size=batch_size, shuffle=True, seed=0)

    variants = {
        "decode every epoch": pipeline(manifest, cache_in_memory=False),
        "in-memory cache (2nd epoch on)": pipeline(manifest, cache_in_memory=True),
        "deterministic=False": pipeline(manifest, cache_in_memory=False, deterministic=False),
        "prepared TFRecords (4 shards)": pipeline(prepared, cache_in_memory=False),
    }

    def epoch(ds):
        return lambda: sum(int(t.shape[0]) for _, t in ds)

    for ds in variants.values():  # warm up: trace the map functions, fill the in-memory cache
        epoch(ds)()

    keras.utils.set_random_seed(0)
    model = build_model(config)
    compile_model(model, config, steps_per_epoch=100)
    x, y = next(iter(pipeline(manifest, args.batch_size, cache_in_memory=False)))
    model.train_on_batch(x, y)  # trace and build the optimizer

    def steps():
        for _ in range(args.steps):
            model.train_on_batch(x, y)

    fed = pipeline(manifest, args.batch_size, cache_in_memory=False).repeat()

    fit_seconds = []

    def fit_fed():  # steps 2..N of one fit call (fit's set-up is paid once per training run)
        fit_seconds.append(fit_step_seconds(model, fed, args.steps))

    sides = {name: epoch(ds) for name, ds in variants.items()}
    times = alternate(args.rounds, train_steps=steps, fit_fed_by_pipeline=fit_fed, **sides)
    times["fit_fed_by_pipeline"] = fit_seconds
    model_rate = args.steps * args.batch_size / best(times["train_steps"])
    fed_rate = args.steps * args.batch_size / best(times["fit_fed_by_pipeline"])
    def spread(name):
        return " ".join(f"{t:.2f}" for t in times[name])

    rows = [[f"pipeline: {name}", len(manifest) / best(times[name]), len(manifest) / best(times[name]) / model_rate,
             spread(name)] for name in variants]
    rows.append(["model: train step, in-memory batch", model_rate, 1.0, spread("train_steps")])
    rows.append(["model: fit fed by the pipeline", fed_rate, fed_rate / model_rate, spread("fit_fed_by_pipeline")])
    print(f"\n{len(manifest)} JPEGs 256x256 -> 224x224, batch 32 (pipeline) / {args.batch_size} (model), "
          f"best of {args.rounds} alternating rounds; tf.data threads share the same {os.cpu_count()} cores")
    print_table(["what", "images/s", "x model", "seconds per round"], rows)
    print()
    print_ratio("pipeline_decode_vs_model", rows[0][2], ">= 3")
    print_ratio("pipeline_cached_vs_model", rows[1][2], ">= 3")
    print_ratio("fit_fed_by_pipeline_vs_in_memory", fed_rate / model_rate, "~1: the model does not wait")
    tf.io.gfile.rmtree(work)


if __name__ == "__main__":
    main()
