"""``balanced``'s stage 2 over many random splits: does fine-tuning the text encoder beat stage 1?

One 121-row test split cannot tell two recipes apart (one row is 0.8 points). Like
``benchmarks/head_splits.py``, this pools the real-image example's 605 rows (Tux Paint stamps,
frozen EfficientNet-Lite0 + MiniLM features from tfmm's feature cache, 4 cached augmented views
of every image) and draws ``--splits`` seeded stratified 60/20/20 splits. On each it runs
``balanced``'s two stages (``tfmm.training.presets``) with tfmm's own parts:

1. stage 1: ``--members`` dense heads (``tfmm.models.heads``, the example's head with feature
   dropout 0.2), each trained alone on the training rows and their views, averaged;
2. stage 2: those heads as one ensemble head (``tfmm.models.head_ensemble``) over the cached
   image features and a *trained* MiniLM (its top ``--text-layers`` layers,
   ``tfmm.models.freezing``), on the same rows and views, with tfmm's optimizer
   (``make_optimizer``: AdamW, warmup then cosine decay, the text encoder at
   ``--stage2-learning-rate x --encoder-lr-scale``) for ``--stage2-epochs`` epochs, early
   stopping on the validation loss, and tfmm's guard (``KeepStartingWeights``: stage 1's weights
   kept when no epoch improves their validation loss);

next to scikit-learn's logistic regression on the same features with ``C`` chosen on validation.
It prints each split's test accuracies, then each recipe's mean, its paired difference to
logistic regression and to stage 1 with the standard error over all test rows, and the splits won.

    python benchmarks/stage2_splits.py              # 10 splits, about 40 minutes on 2 cores
    python benchmarks/stage2_splits.py --splits 3
    python benchmarks/stage2_splits.py --first-split 10   # 10 more splits: seeds 10..19

Each run's per-row results go to ``OUTPUT_DIR/stage2_splits_<first>-<last>.json``.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "real_images"))
sys.path.insert(0, HERE)

import common  # noqa: E402  (sets the Keras backend and this checkout's tfmm on the path)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import frozen_linear_baseline as baseline  # noqa: E402
import head_splits  # noqa: E402
import train_tuxpaint  # noqa: E402
from tfmm.training import presets  # noqa: E402


def parse_args(argv=None):
    parser = head_splits.split_parser(__doc__, "runs/stage2_splits")
    parser.add_argument("--first-split", type=int, default=0,
                        help="seed of the first split (--first-split 10 --splits 10: splits 10..19)")
    parser.add_argument("--text-layers", type=int, default=presets.BALANCED_TEXT_LAYERS,
                        help="top MiniLM layers trained in stage 2")
    parser.add_argument("--stage2-learning-rate", type=float, default=presets.BALANCED_LEARNING_RATE)
    parser.add_argument("--encoder-lr-scale", type=float, default=presets.BALANCED_ENCODER_LR_SCALE,
                        help="the text encoder's share of the stage-2 learning rate")
    parser.add_argument("--stage2-epochs", type=int, default=presets.BALANCED_EPOCHS)
    return parser.parse_args(argv)


def stage2(config, args, heads: list, x: dict, tokens: dict, views: np.ndarray, y: np.ndarray, parts: tuple):
    """``(test probabilities, kept stage 1)`` of stage 2 started from the stage-1 ``heads``."""
    import keras

    from tfmm.models.freezing import unfreeze_top_blocks
    from tfmm.models.head_ensemble import build_head_ensemble, members
    from tfmm.models.heads import build_dense_head
    from tfmm.models.text import build_text_encoder, text_inputs
    from tfmm.training.optimizer import make_optimizer
    from tfmm.training.stages import KeepStartingWeights

    train, val, test = parts
    mc, dc = config.model, config.data
    keras.utils.set_random_seed(args.seed)
    encoder = build_text_encoder(mc.text_encoder, sequence_length=dc.sequence_length, pooling=mc.text_pooling,
                                 trainable=True)
    unfreeze_top_blocks(encoder, args.text_layers, flag="--text-layers")
    dims = {"image_features": x["image_features"].shape[1], "text_features": encoder.output.shape[-1]}
    head = build_head_ensemble(config.replace(model={"head_ensemble": len(heads)}), dims,
                               lambda cfg, d: build_dense_head(cfg, d, units=mc.num_classes, activation="softmax"))
    for member, trained in zip(members(head), heads):
        member.set_weights(trained.get_weights())
    words = text_inputs(dc.sequence_length)
    image = keras.Input(shape=(dims["image_features"],), name="image_features")
    model = keras.Model({**words, "image_features": image}, head({"image_features": image, "text_features": encoder(words)}))

    def inputs(rows, image_features):
        return {**{k: tokens[k][rows] for k in words}, "image_features": image_features[rows]}

    copies = 1 + len(views)
    every = np.concatenate([x["image_features"][None], views])  # [copies, N, D]: the originals, then each view
    train_x = {**{k: np.concatenate([tokens[k][train]] * copies) for k in words},
               "image_features": every[:, train].reshape(copies * len(train), -1)}
    train_y = np.concatenate([y[train]] * copies)
    cfg = config.replace(train={"learning_rate": args.stage2_learning_rate, "encoder_lr_scale": args.encoder_lr_scale,
                                "epochs": args.stage2_epochs})
    model.compile(make_optimizer(cfg, -(-len(train_y) // 32), model), "sparse_categorical_crossentropy")
    val_xy = (inputs(val, x["image_features"]), y[val])
    guard = KeepStartingWeights(model, val_xy)
    model.fit(train_x, train_y, validation_data=val_xy, epochs=args.stage2_epochs, batch_size=32, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=args.patience, restore_best_weights=True), guard])
    return model.predict(inputs(test, x["image_features"]), verbose=0), guard.kept_start


def summary(correct: dict, reference: str, splits: int) -> list:
    """Rows ``[name, mean accuracy, - reference (paired SE), splits won]`` over all test rows."""
    base = np.concatenate(correct[reference]).astype(float)
    rows = []
    for name, per_split in correct.items():
        flat = np.concatenate(per_split).astype(float)
        d = flat - base
        wins = sum(a.mean() > b.mean() for a, b in zip(per_split, correct[reference]))
        rows.append([name, f"{flat.mean():.4f}", f"{d.mean():+.4f} +- {np.sqrt(d.var(ddof=1) / len(d)):.4f}",
                     "" if name == reference else f"{wins} of {splits}"])
    return rows


def main(argv=None) -> dict:
    import tensorflow as tf

    from tfmm.models.text import load_text_preprocessor

    args = parse_args(argv)
    config, paths, x, y, classes, views = head_splits.pooled_rows(
        args, "balanced's stage 2 vs stage 1 vs logistic regression over random splits")
    splits = train_tuxpaint.tuxpaint_stamps.SPLITS
    texts = np.concatenate([pd.read_csv(paths[s])["text"].astype(str).to_numpy() for s in splits])
    preprocessor = load_text_preprocessor(config.model.text_encoder, config.data.sequence_length)
    tokens = {k: np.asarray(v) for k, v in preprocessor(tf.constant(texts)).items()}
    config = config.replace(model={"num_classes": len(classes), "feature_dropout": args.feature_dropout})
    stage1_name = f"stage 1: {args.members} heads averaged, {args.views} views"
    stage2_name = f"stage 2: + MiniLM top {args.text_layers} layers"
    correct = {name: [] for name in ("logistic regression", stage1_name, stage2_name)}
    kept = 0
    seeds = range(args.first_split, args.first_split + args.splits)
    for seed in seeds:
        parts = head_splits.split(y, seed)
        train, val, test = parts
        stacked = np.concatenate(list(x.values()), axis=1)
        clf, _, _ = baseline.fit_logistic_regression(stacked[train], y[train], stacked[val], y[val])
        correct["logistic regression"].append(clf.predict(stacked[test]) == y[test])
        heads = [head_splits.train_head(config, x, y, parts, args.seed + k, args.epochs, args.patience, views=views)
                 for k in range(args.members)]
        stage1 = np.mean([h.predict({k: v[test] for k, v in x.items()}, verbose=0) for h in heads], axis=0)
        correct[stage1_name].append(stage1.argmax(axis=1) == y[test])
        probs, kept_start = stage2(config, args, heads, x, tokens, views, y, parts)
        correct[stage2_name].append(probs.argmax(axis=1) == y[test])
        kept += kept_start
        print(f"split {seed}: " + ", ".join(f"{n} {c[-1].mean():.3f}" for n, c in correct.items())
              + ("; stage 2 kept stage 1's weights" if kept_start else ""), flush=True)
    header = ["recipe", "mean test acc", "- {} (paired SE)", "splits won"]
    for reference in ("logistic regression", stage1_name):
        common.print_table([h.format(reference) for h in header], summary(correct, reference, args.splits))
    print(f"stage 2 kept stage 1's weights on {kept} of {args.splits} splits (no epoch lowered the validation loss)")
    out = os.path.join(args.output_dir, f"stage2_splits_{seeds.start}-{seeds.stop - 1}.json")
    with open(out, "w", encoding="utf-8") as f:  # per split and test row: right or wrong, to pool runs
        json.dump({"splits": list(seeds), "correct": {n: [c.astype(int).tolist() for c in v]
                                                      for n, v in correct.items()}}, f)
    print(f"results: {out}")
    return correct


if __name__ == "__main__":
    main()
