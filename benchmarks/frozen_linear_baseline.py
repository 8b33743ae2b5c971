"""tfmm vs. frozen features + logistic regression, on the real-image example, in one run.

The baseline a practitioner writes first: run the same frozen pretrained encoders once
(built with tfmm's own ``build_image_encoder`` / ``build_text_encoder``, so the features are
the ones tfmm's head sees), standardize the features and fit scikit-learn's
``LogisticRegression`` on the training split, with ``C`` chosen on the validation split.
tfmm trains its fused model (frozen encoders, cached features, early stopping on the same
validation split) through ``examples/real_images/train_tuxpaint.py``. Both are scored on the
same test split, and the script prints both accuracies and their ratio (tfmm / baseline).

    python benchmarks/frozen_linear_baseline.py                      # Lite0 + MiniLM
    python benchmarks/frozen_linear_baseline.py --image-encoder mobilenetv2 --image-weights none
    python benchmarks/frozen_linear_baseline.py --single-modality    # also tfmm image/text-only

It takes every flag of the example (``--help``); results also go to
``OUTPUT_DIR/frozen_linear_baseline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "real_images"))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets the Keras backend and this checkout's tfmm on the path)
import numpy as np  # noqa: E402

import train_tuxpaint  # noqa: E402

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))  # 1e-4 ... 100, half-decade steps
FEATURE_SETS = {"fused": ("image", "text"), "image-only": ("image",), "text-only": ("text",)}


def encoder_features(config, paths: dict, cache_dir: str) -> dict:
    """``{split: {"image": [N, D], "text": [N, H]}}`` and ``{split: labels}`` from the frozen
    encoders (tfmm's builders, tfmm's input pipeline and feature cache)."""
    import tfmm
    from tfmm.data.manifest import check_manifest
    from tfmm.models.text import load_text_preprocessor
    from tfmm.training.feature_cache import cached_features

    mc, dc = config.model, config.data
    encoders = frozen_encoders(config)
    preprocessor = load_text_preprocessor(mc.text_encoder, dc.sequence_length)
    features, labels = {}, {}
    for split in train_tuxpaint.tuxpaint_stamps.SPLITS:
        manifest = check_manifest(tfmm.read_manifest(paths[split], dc))
        labels[split] = manifest.frame["label"].to_numpy()
        features[split] = {
            modality: cached_features(encoder, modality, manifest, config=config, cache_dir=cache_dir,
                                      preprocessor=preprocessor, verbose=0)[0]
            for modality, encoder in encoders.items()
        }
    return features, labels


def frozen_encoders(config, modalities=("image", "text")) -> dict:
    """``{modality: frozen encoder}``, seeded and built in build_model's order (image first), so
    even random (``--image-weights none``) encoders are the ones tfmm's run uses, and the
    feature cache is shared with it."""
    import keras

    from tfmm.models.text import build_text_encoder
    from tfmm.models.vision import build_image_encoder

    mc, dc = config.model, config.data
    keras.utils.set_random_seed(config.train.seed)
    build = {
        "image": lambda: build_image_encoder(mc.image_encoder, weights=mc.image_weights,
                                             image_size=dc.image_size, trainable=False),
        "text": lambda: build_text_encoder(mc.text_encoder, sequence_length=dc.sequence_length,
                                           pooling=mc.text_pooling, trainable=False),
    }
    return {m: build[m]() for m in ("image", "text") if m in modalities}


def fit_logistic_regression(x_train, y_train, x_val, y_val, c_grid=C_GRID, seed: int = 0):
    """Standardize + ``LogisticRegression``, ``C`` chosen by validation accuracy (ties: the
    lower validation log-loss). Returns ``(pipeline, C, val_accuracy)``."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these matrices are tiny, and on a busy machine OpenBLAS' threads spin
    # against each other (measured: 0.8 s vs 20 s for one fit on 2 shared cores).
    with threadpool_limits(limits=1):
        best = _search_c(x_train, y_train, x_val, y_val, c_grid, seed)
    return best[0], best[1], best[2]


def _search_c(x_train, y_train, x_val, y_val, c_grid, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in c_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
        clf.fit(x_train, y_train)
        accuracy = float(np.mean(clf.predict(x_val) == y_val))
        loss = log_loss(y_val, clf.predict_proba(x_val), labels=clf.classes_)
        if best is None or (accuracy, -loss) > (best[2], -best[3]):
            best = (clf, c, accuracy, loss)
    return best


def linear_baselines(features: dict, labels: dict, seed: int = 0) -> dict:
    """Test accuracy and macro-F1 of the baseline on each feature set of ``FEATURE_SETS``."""
    from sklearn.metrics import f1_score

    def stack(split, modalities):
        return np.concatenate([features[split][m] for m in modalities], axis=1)

    out = {}
    for name, modalities in FEATURE_SETS.items():
        clf, c, val_accuracy = fit_logistic_regression(
            stack("train", modalities), labels["train"], stack("val", modalities), labels["val"], seed=seed)
        predicted = clf.predict(stack("test", modalities))
        out[name] = {
            "accuracy": float(np.mean(predicted == labels["test"])),
            "f1_macro": float(f1_score(labels["test"], predicted, average="macro")),
            "C": c, "val_accuracy": val_accuracy, "n_examples": int(len(predicted)),
        }
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = train_tuxpaint.build_parser(__doc__, default_out="runs/frozen_linear_baseline")
    parser.add_argument("--single-modality", action="store_true",
                        help="also train tfmm's image-only and text-only models")
    return parser.parse_args(argv)


def start_benchmark(args, title: str) -> tuple:
    """Logging, the machine header, the prepared split and its ``data:`` line: ``(paths, source)``."""
    train_tuxpaint.configure_logging()
    common.print_header(title)
    return prepare_split(args)


def prepare_split(args, folds: int = None, fold: int = 0) -> tuple:
    """The prepared split (fold ``fold`` of ``folds``, given ``folds``) and its ``data:`` line:
    ``(paths, source)``."""
    paths = train_tuxpaint.prepare(args, folds=folds, fold=fold)
    with open(paths["source"], encoding="utf-8") as f:
        source = json.load(f)
    which = f", fold {fold} of {folds}" if folds else ""
    print(f"data: {source['package']} {source['package_version']}, rows {source['rows']}, "
          f"{len(source['classes'])} classes, split seed {args.split_seed}{which}")
    return paths, source


def main(argv=None) -> dict:
    args = parse_args(argv)
    paths, source = start_benchmark(args, "frozen features + logistic regression vs tfmm (Tux Paint stamps)")
    config = train_tuxpaint.make_config(args, modalities="both")
    print(f"encoders: image {config.model.image_encoder} (weights {config.model.image_weights}), "
          f"text {config.model.text_encoder}, both frozen")

    results = {"tfmm": {}, "baseline": {}}
    settings = ["both"] + (["image", "text"] if args.single_modality else [])
    for modalities, name in zip(settings, FEATURE_SETS):
        start = time.perf_counter()
        metrics = train_tuxpaint.train_and_evaluate(
            train_tuxpaint.make_config(args, modalities=modalities), paths, args.output_dir, verbose=0)
        results["tfmm"][name] = {"accuracy": float(metrics["accuracy"]), "f1_macro": float(metrics["f1_macro"]),
                                 "n_examples": int(metrics["n_examples"]), "seconds": time.perf_counter() - start}

    start = time.perf_counter()
    features, labels = encoder_features(config, paths, config.train.cache_dir)
    results["baseline"] = linear_baselines(features, labels, seed=args.seed)
    baseline_seconds = time.perf_counter() - start

    rows = []
    for name in FEATURE_SETS:
        t, b = results["tfmm"].get(name), results["baseline"][name]
        rows.append([name, t["accuracy"] if t else "-", b["accuracy"], t["f1_macro"] if t else "-",
                     b["f1_macro"], f"{b['C']:.3g}", (t["accuracy"] / b["accuracy"]) if t else "-"])
    common.print_table(["features", "tfmm acc", "baseline acc", "tfmm F1", "baseline F1", "baseline C",
                        "acc ratio"], rows)
    ratio = results["tfmm"]["fused"]["accuracy"] / results["baseline"]["fused"]["accuracy"]
    results.update(ratio=ratio, source=source, config=config.to_dict(), baseline_seconds=baseline_seconds)
    print(f"fused test accuracy: tfmm {results['tfmm']['fused']['accuracy']:.4f}, "
          f"baseline {results['baseline']['fused']['accuracy']:.4f}, "
          f"ratio tfmm/baseline {ratio:.3f} ({results['tfmm']['fused']['n_examples']} test rows)")
    out = os.path.join(args.output_dir, "frozen_linear_baseline.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"results: {out}")
    return results


if __name__ == "__main__":
    main()
