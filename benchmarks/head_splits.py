"""tfmm's fusion head on frozen features over many random splits, next to logistic regression.

One 121-row test split cannot tell heads apart (one row is 0.8 points). This benchmark takes
the real-image example's frozen features (EfficientNet-Lite0 + MiniLM, Tux Paint stamps, the
feature cache of ``examples/real_images/``), pools the 605 rows and draws ``--splits`` seeded
stratified 60/20/20 splits; on each it trains tfmm's dense head (``tfmm.models.heads``, the
example's head: dropout 0.5, Adam 1e-3, early stopping on the validation loss, patience 8)
with and without feature dropout, the average of ``--members`` such heads each trained alone,
that average trained on the cached features of ``--views`` augmented copies of each training
image as well (``tfmm.training.feature_views.cached_view_features``: what the ``balanced``
preset's stage 1 builds), and scikit-learn's logistic regression with ``C`` chosen on validation. It prints each one's mean test accuracy over the splits, its
paired difference to logistic regression with the standard error over all test rows, and
how many splits it won, and its test ECE after temperature scaling fitted on the validation rows
(tfmm's calibration), averaged over the splits.

    python benchmarks/head_splits.py                 # 10 splits, about 16 minutes on 2 cores
    python benchmarks/head_splits.py --splits 3
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "real_images"))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets the Keras backend and this checkout's tfmm on the path)
import numpy as np  # noqa: E402

import frozen_linear_baseline as baseline  # noqa: E402
import train_tuxpaint  # noqa: E402


def split_parser(description: str, default_out: str):
    """The example's flags plus the splits, the ensemble's members, feature dropout and views
    (defaults: the ``balanced`` preset's)."""
    from tfmm.training import presets

    parser = train_tuxpaint.build_parser(description, default_out=default_out)
    parser.add_argument("--splits", type=int, default=10, help="random splits (seeds 0..N-1)")
    parser.add_argument("--members", type=int, default=presets.ENSEMBLE_HEADS, help="heads averaged in the ensemble")
    parser.add_argument("--feature-dropout", type=float, default=presets.FEATURE_DROPOUT)
    parser.add_argument("--views", type=int, default=presets.FEATURE_VIEWS, help="augmented copies per training image")
    return parser


def parse_args(argv=None):
    return split_parser(__doc__, "runs/head_splits").parse_args(argv)


def split(labels: np.ndarray, seed: int) -> tuple:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.4, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    return train, val, test


def head_scores(config, x: dict, y: np.ndarray, parts: tuple, seed: int, epochs: int, patience: int,
                views: np.ndarray = None):
    """``(validation, test)`` class probabilities of one tfmm dense head trained on ``parts[0]``
    (and, given ``views`` ``[V, N, D]``, on those rows' augmented image features too)."""
    head = train_head(config, x, y, parts, seed, epochs, patience, views)
    take = lambda rows: {k: v[rows] for k, v in x.items()}  # noqa: E731
    return head.predict(take(parts[1]), verbose=0), head.predict(take(parts[2]), verbose=0)


def train_head(config, x: dict, y: np.ndarray, parts: tuple, seed: int, epochs: int, patience: int,
               views: np.ndarray = None):
    """One tfmm dense head (``fusion_head``) trained on rows ``parts[0]`` of the features ``x``
    (and, given ``views`` ``[V, N, D]``, on those rows' augmented image features too), stopped
    early on rows ``parts[1]``."""
    import keras

    from tfmm.models.heads import build_dense_head

    train, val, _ = parts
    keras.utils.set_random_seed(seed)
    dims = {k: v.shape[1] for k, v in x.items()}
    head = build_dense_head(config, dims, units=config.model.num_classes, activation="softmax")
    head.compile(keras.optimizers.Adam(config.train.learning_rate), "sparse_categorical_crossentropy")
    take = lambda rows: {k: v[rows] for k, v in x.items()}  # noqa: E731
    train_x, train_y = take(train), y[train]
    if views is not None:
        copies = 1 + len(views)
        train_x = {k: np.concatenate([v, *views[:, train]] if k == "image_features" else [v] * copies)
                   for k, v in train_x.items()}
        train_y = np.concatenate([train_y] * copies)
    head.fit(train_x, train_y, validation_data=(take(val), y[val]), epochs=epochs, batch_size=32, verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)])
    return head


def calibrated(val_probs: np.ndarray, y_val: np.ndarray, test_probs: np.ndarray) -> np.ndarray:
    """The test probabilities after tfmm's temperature scaling fitted on the validation rows."""
    from tfmm.evaluation.calibration import fit_report, scale_probabilities

    return scale_probabilities(test_probs, fit_report(val_probs, y_val, "softmax")["temperature"], "softmax")


def view_features(config, paths: dict, views: int) -> np.ndarray:
    """``[views, 605, D]``: the frozen image encoder's features of ``views`` augmented copies of
    every stamp (tfmm's feature cache, seeded views), rows in the splits' order."""
    import tfmm
    from tfmm.data.manifest import check_manifest
    from tfmm.training.feature_views import cached_view_features

    encoder = baseline.frozen_encoders(config, modalities=("image",))["image"]
    out = []
    for split in train_tuxpaint.tuxpaint_stamps.SPLITS:
        manifest = check_manifest(tfmm.read_manifest(paths[split], config.data))
        stacked = cached_view_features(encoder, manifest, config=config, cache_dir=config.train.cache_dir,
                                       views=views, verbose=0)[0]
        out.append(stacked.reshape(views, len(manifest), -1))
    return np.concatenate(out, axis=1)


def ece_summary(per_split: list, ece) -> str:
    """``mean (worst); pooled`` ECE of ``[(probabilities, targets), ...]``: each split's test rows
    alone, and all splits' test rows together (ECE of few rows is mostly its own sampling noise:
    ``benchmarks/ece_noise.py``)."""
    each = [ece(p, t) for p, t in per_split]
    pooled = ece(np.concatenate([p for p, _ in per_split]), np.concatenate([t for _, t in per_split]))
    return f"{np.mean(each):.4f} ({np.max(each):.4f}); {pooled:.4f}"


def pooled_rows(args, title: str) -> tuple:
    """The example's 605 rows pooled from its three splits: ``(config, paths, x, y, classes, views)``
    with ``x`` the frozen features ``{"image_features", "text_features"}``, ``y`` the class ids
    and ``views`` the augmented image features ``[V, 605, D]``."""
    paths, _ = baseline.start_benchmark(args, title)
    config = train_tuxpaint.make_config(args, modalities="both")
    features, labels = baseline.encoder_features(config, paths, config.train.cache_dir)
    splits = train_tuxpaint.tuxpaint_stamps.SPLITS
    views = view_features(config, paths, args.views)
    x = {f"{m}_features": np.concatenate([features[s][m] for s in splits]) for m in ("image", "text")}
    names = np.concatenate([labels[s] for s in splits])
    classes = sorted(set(names))
    return config, paths, x, np.array([classes.index(v) for v in names]), classes, views


def main(argv=None) -> dict:
    args = parse_args(argv)
    config, paths, x, y, classes, views = pooled_rows(
        args, "tfmm's head vs logistic regression over random splits (Tux Paint)")
    config = config.replace(model={"num_classes": len(classes)})
    averaged = f"{args.members} heads averaged, feature dropout"
    with_views = f"{averaged}, {args.views} augmented views"
    variants = {"one head": 0.0, "one head, feature dropout": args.feature_dropout,
                averaged: args.feature_dropout, with_views: args.feature_dropout}
    correct = {name: [] for name in ["logistic regression", *variants]}
    ece = {name: [] for name in variants}
    for seed in range(args.splits):
        parts = split(y, seed)
        stacked = np.concatenate(list(x.values()), axis=1)
        clf, _, _ = baseline.fit_logistic_regression(stacked[parts[0]], y[parts[0]], stacked[parts[1]], y[parts[1]])
        correct["logistic regression"].append(clf.predict(stacked[parts[2]]) == y[parts[2]])
        for name, rate in variants.items():
            cfg = config.replace(model={"feature_dropout": rate})
            members = args.members if "averaged" in name else 1
            scores = [head_scores(cfg, x, y, parts, args.seed + k, args.epochs, args.patience,
                                  views=views if name == with_views else None) for k in range(members)]
            val_probs, probs = (np.mean([s[i] for s in scores], axis=0) for i in (0, 1))
            correct[name].append(probs.argmax(axis=1) == y[parts[2]])
            ece[name].append((calibrated(val_probs, y[parts[1]], probs), y[parts[2]]))
        print(f"split {seed}: " + ", ".join(f"{n} {c[-1].mean():.3f}" for n, c in correct.items()), flush=True)
    from tfmm.evaluation.calibration import expected_calibration_error

    base = np.concatenate(correct["logistic regression"]).astype(float)
    rows = []
    for name, per_split in correct.items():
        flat = np.concatenate(per_split).astype(float)
        d = flat - base
        wins = sum(a.mean() > b.mean() for a, b in zip(per_split, correct["logistic regression"]))
        rows.append([name, f"{flat.mean():.4f}", f"{d.mean():+.4f} +- {np.sqrt(d.var(ddof=1) / len(d)):.4f}",
                     "" if name == "logistic regression" else f"{wins} of {args.splits}",
                     ece_summary(ece[name], expected_calibration_error) if name in ece else ""])
    common.print_table(["model", "mean test acc", "- logistic regression (paired SE)", "splits won",
                        "calibrated test ECE: per split, mean (worst); all test rows pooled"], rows)
    return correct


if __name__ == "__main__":
    main()
