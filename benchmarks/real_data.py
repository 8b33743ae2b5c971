"""tfmm's presets on real images and captions, next to frozen features + logistic regression.

On the real-image example (Tux Paint stamps, ``examples/real_images/``; the same split as
``benchmarks/frozen_linear_baseline.py``), one run trains each preset (``fast``, ``balanced``,
``best``) with the example's encoders (EfficientNet-Lite0 + MiniLM) and head (dropout 0.5,
patience 8), leaving every option a preset governs to it, and scores it on the test split:
accuracy, macro-F1, ECE (when ``tfmm.evaluate`` reports it), wall time (training); also the
validation accuracy of the weights kept (the split the recipes are tuned on). The baseline is the frozen-features + logistic
regression of ``frozen_linear_baseline.py`` on the same split. The script prints the ratios
preset / baseline, and the paired difference balanced - baseline in test accuracy with its
standard error over the test rows, ``sqrt(var(correct_a - correct_b) / n)``.

    python benchmarks/real_data.py                             # fast, balanced, best
    python benchmarks/real_data.py --presets fast,balanced     # a subset
    python benchmarks/real_data.py --output-dir runs/tuxpaint  # reuse prepared data / caches
    python benchmarks/real_data.py --presets fast,balanced --folds 5   # every stamp a test row

One split of 605 stamps tests on 121 rows, where one row is 0.8 points. ``--folds N`` runs the
same comparison on each fold of a stratified N-fold cross-validation instead (fold k tests on
part k, stops early on part k + 1, trains on the rest: 60/20/20 for 5 folds) and then prints
the table pooled over the folds: every stamp is a test row exactly once, and the paired
standard error, macro-F1 and (calibrated) ECE are over all of them; validation accuracy is the
folds' mean and seconds their sum.

It takes every flag of the example (``--help``; flags a preset governs are not passed on:
``--epochs``/``--learning-rate``/``--no-freeze`` are the presets' to set). Results also go to
``OUTPUT_DIR/real_data.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "real_images"))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets the Keras backend and this checkout's tfmm on the path)
import numpy as np  # noqa: E402

import frozen_linear_baseline as baseline  # noqa: E402
import train_tuxpaint  # noqa: E402

PRESETS = ("fast", "balanced", "best")


def parse_args(argv=None):
    parser = train_tuxpaint.build_parser(__doc__, default_out="runs/real_data")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help="comma-separated presets to run (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=0,
                        help="0: the example's split (--split-seed); N >= 3: each fold of a stratified "
                             "N-fold cross-validation, then pooled (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.folds and args.folds < 3:
        parser.error(f"--folds: 0 or at least 3; received {args.folds}")
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown:
        parser.error(f"--presets: unknown {unknown}; allowed: {list(PRESETS)}")
    return args


def preset_config(args, preset: str):
    """The example's config with ``preset`` and every option it governs left open."""
    return train_tuxpaint.make_config(args).replace(
        model={"freeze_image": None, "freeze_text": None},
        train={"preset": preset, "epochs": None, "learning_rate": None},
    )


def run_preset(args, preset: str, paths: dict, name: str = None) -> dict:
    """Trains one preset (in ``runs/NAME``, default the preset's name); its test metrics,
    validation accuracy, per-row predictions and correctness, and time."""
    import tfmm

    run_dir = os.path.join(args.output_dir, "runs", name or preset)
    start = time.perf_counter()
    result = tfmm.train(preset_config(args, preset), paths["train"], paths["val"], run_dir, overwrite=True,
                        verbose=0)
    seconds = time.perf_counter() - start
    test = tfmm.evaluate(run_dir, paths["test"], report_dir=os.path.join(run_dir, "test_report"))
    labels = sorted(result.labels)
    rows = tfmm.predict(run_dir, paths["test"], k=len(labels))  # every label's (calibrated) score
    scores = [dict(zip(r["labels"], r["scores"])) for r in rows]
    probabilities = [[row[label] for label in labels] for row in scores]
    predicted, true = [r["labels"][0] for r in rows], [r["true_label"] for r in rows]
    return {"accuracy": float(test["accuracy"]), "f1_macro": float(test["f1_macro"]),
            "ece": test.get("ece"), "val_accuracy": best_val_accuracy(result.history), "seconds": seconds,
            "correct": np.equal(predicted, true).astype(float), "predicted": predicted, "true": true,
            "labels": labels, "probabilities": probabilities, "n_examples": int(test["n_examples"]),
            "run_dir": run_dir, "config": result.config.to_dict()}


def best_val_accuracy(history: dict) -> float:
    """The validation accuracy of the epoch with the lowest validation loss (the weights kept)."""
    losses = history["val_loss"]
    return float(history["val_accuracy"][min(range(len(losses)), key=losses.__getitem__)])


def run_baseline(args, paths: dict) -> dict:
    """The fused frozen-features + logistic-regression baseline: test metrics, per-row correctness."""
    from sklearn.metrics import f1_score

    start = time.perf_counter()
    config = train_tuxpaint.make_config(args, modalities="both")
    features, labels = baseline.encoder_features(config, paths, config.train.cache_dir)

    def stack(split):
        return np.concatenate([features[split][m] for m in ("image", "text")], axis=1)

    clf, c, val_accuracy = baseline.fit_logistic_regression(stack("train"), labels["train"], stack("val"),
                                                            labels["val"], seed=args.seed)
    predicted = clf.predict(stack("test"))
    correct = (predicted == labels["test"]).astype(float)
    return {"accuracy": float(correct.mean()), "f1_macro": float(f1_score(labels["test"], predicted, average="macro")),
            "ece": None, "val_accuracy": val_accuracy, "C": c, "seconds": time.perf_counter() - start,
            "correct": correct, "predicted": predicted.tolist(), "true": labels["test"].tolist(),
            "n_examples": int(len(correct))}


def pooled(folds: list) -> dict:
    """One run's results over the folds: accuracy, macro-F1 and ECE (tfmm's, 15 bins) of the
    pooled test rows, the mean validation accuracy, the total time."""
    from sklearn.metrics import f1_score

    from tfmm.evaluation.calibration import expected_calibration_error

    correct = np.concatenate([f["correct"] for f in folds])
    true, predicted = (sum((list(f[k]) for f in folds), []) for k in ("true", "predicted"))
    ece = None
    if all("probabilities" in f for f in folds):  # the baseline has none
        targets = np.concatenate([[f["labels"].index(t) for t in f["true"]] for f in folds])
        ece = expected_calibration_error(np.concatenate([f["probabilities"] for f in folds]), targets)
    return {"accuracy": float(correct.mean()), "f1_macro": float(f1_score(true, predicted, average="macro")),
            "ece": ece, "val_accuracy": float(np.mean([f["val_accuracy"] for f in folds])),
            "seconds": float(sum(f["seconds"] for f in folds)), "correct": correct, "n_examples": int(len(correct))}


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple:
    """``(mean(a - b), its standard error sqrt(var(a - b) / n))`` of per-row correctness."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.mean()), float(np.sqrt(d.var(ddof=1) / len(d))) if len(d) > 1 else float("nan")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def print_results(results: dict, base: dict) -> None:
    rows = []
    for name, r in [*results.items(), ("frozen+logreg", base)]:
        rows.append([name, _fmt(r["val_accuracy"]), _fmt(r["accuracy"]), _fmt(r["f1_macro"]), _fmt(r["ece"]),
                     f"{r['seconds']:.0f}", f"{r['accuracy'] / base['accuracy']:.3f}",
                     f"{r['f1_macro'] / base['f1_macro']:.3f}"])
    common.print_table(["run", "val acc", "test acc", "test F1", "test ECE", "seconds", "acc / baseline",
                        "F1 / baseline"], rows)
    for name, r in results.items():
        diff, se = paired_difference(r["correct"], base["correct"])
        print(f"{name} - baseline test accuracy: {diff:+.4f} +- {se:.4f} (paired standard error, "
              f"{r['n_examples']} test rows)")
    if "fast" in results and "balanced" in results:
        print(f"fast / balanced wall time: {results['fast']['seconds'] / results['balanced']['seconds']:.2f}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    train_tuxpaint.configure_logging()
    common.print_header("tfmm presets vs frozen features + logistic regression (Tux Paint stamps)")
    print(f"encoders: {args.image_encoder} ({args.image_weights}) + {args.text_encoder}, image size {args.image_size}")
    folds = list(range(args.folds)) if args.folds else [None]
    runs = {"presets": {p: [] for p in args.presets}, "baseline": []}
    out = os.path.join(args.output_dir, "real_data.json")
    for fold in folds:
        paths, source = baseline.prepare_split(args, args.folds or None, fold or 0)
        runs["baseline"].append(run_baseline(args, paths))
        fold_count = len(runs["baseline"])
        for preset in args.presets:  # the table so far after each preset (a long run can be cut short)
            name = preset if fold is None else f"{preset}_fold{fold}of{args.folds}"
            runs["presets"][preset].append(run_preset(args, preset, paths, name))
            this_fold = {p: r[-1] for p, r in runs["presets"].items() if len(r) == fold_count}
            print_results(this_fold, runs["baseline"][-1])
            write_results(out, runs, source)
    summary = pooled if args.folds else (lambda r: r[-1])
    results = {"presets": {p: summary(r) for p, r in runs["presets"].items()}, "baseline": summary(runs["baseline"])}
    if args.folds:
        print(f"pooled over {args.folds} folds (every stamp a test row once):")
        print_results(results["presets"], results["baseline"])
    print(f"results: {out}")
    return {**results, "runs": runs}


def write_results(path: str, runs: dict, source: dict) -> None:
    """``real_data.json``: every run of every fold so far (one fold: the example's split)."""
    def plain(run):
        return {**run, "correct": np.asarray(run["correct"]).tolist()}

    with open(path, "w", encoding="utf-8") as f:
        json.dump({"presets": {k: [plain(r) for r in v] for k, v in runs["presets"].items()},
                   "baseline": [plain(r) for r in runs["baseline"]], "source": source,
                   "machine": common.machine_info()}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
