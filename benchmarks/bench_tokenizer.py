"""The core-op WordPiece tokenizer vs KerasHub's TF Text one: tokenization alone and the
whole serving signature, same batch.

Tokenization alone: MiniLM's vocabulary, a batch of real texts in many languages (gettext
catalogues, licences, docstrings: ``tests/text_corpus.py``, cut to caption length), packed
to 64 tokens; ``tfmm.models.text.KerasHubTextPreprocessor`` (core ops) vs KerasHub's
``BertTextClassifierPreprocessor`` (TF Text ops), each in a ``tf.function``.

Whole signature: the default model (VGG16 at 224 + MiniLM, frozen, trained for one epoch on
36 JPEGs) exported twice with ``tfmm.serving.archive.build_export_archive``: once as tfmm exports it
(core-op tokenizer), once with the TF Text preprocessor swapped in; both SavedModels are
loaded back and ``serving_default`` is called on the same raw JPEG bytes + texts, alternating.

Byte-level BPE (``--bpe``, or ``--bpe-only`` for this part alone): tfmm's
``CoreBytePairTokenizer`` (core ops) vs KerasHub's ``GPT2Tokenizer`` graph (TF Text's regex
split), each in a ``tf.function``, same vocabulary and merges (a byte-level BPE trained here on
the corpus: no GPT-2 vocabulary is installed). Twice: on batches both have seen before
(KerasHub's word cache then answers every word) and on batches new to both each round.

Run: ``python benchmarks/bench_tokenizer.py`` (about 3-5 minutes on 2 CPU cores;
``--bpe-only``: about 2 minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import common  # noqa: F401  (sets the environment and sys.path first)
from common import (alternate, best, median, print_header, print_ratio, print_table, timed,
                    train_frozen_default_run)


class TFTextPreprocessor:
    """What tfmm used before: KerasHub's BERT preprocessor (TF Text ops, round-robin packing)."""

    def __init__(self, source: str, sequence_length: int):
        import keras_hub

        self.tokenizer = keras_hub.models.BertTokenizer.from_preset(source)
        self.sequence_length = sequence_length
        self.packer = keras_hub.models.BertTextClassifierPreprocessor(self.tokenizer, sequence_length=sequence_length)

    def __call__(self, strings):
        import tensorflow as tf

        out = self.packer(strings)
        return {k: tf.cast(out[k], tf.int32) for k in ("token_ids", "segment_ids", "padding_mask")}


def real_texts(n: int, max_chars: int = 160) -> list:
    from tests.text_corpus import gettext_strings, licence_strings, docstring_strings
    import itertools

    pool = gettext_strings(n) + licence_strings(n // 4) + list(itertools.islice(docstring_strings(), n // 4))
    texts = [t.replace("\n", " ")[:max_chars] for t in pool if t.strip()]
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def bpe_comparison(batch: int, rounds: int, merges: int) -> None:
    """Texts/s of the core-op BPE tokenizer vs KerasHub's graph: seen batches, then new ones."""
    import keras_hub
    import tensorflow as tf

    from tests.models.test_bpe_tokenizer import train_bpe
    from tests.text_corpus import build_corpus
    from tfmm.models.bpe_tokenizer import CoreBytePairTokenizer, bytes_to_unicode

    corpus = [t.replace(b"\n", b" ")[:160] for t in build_corpus(2000 + rounds * 4 * batch)[100:] if t.strip()]
    rules = train_bpe(corpus[:1000], merges)
    vocabulary = {t: i for i, t in enumerate(dict.fromkeys(bytes_to_unicode() + [m.replace(" ", "") for m in rules]))}
    vocabulary["<|endoftext|>"] = len(vocabulary)
    reference = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=rules)
    spec = [tf.TensorSpec([None], tf.string)]
    sides = {"core ops (tfmm)": tf.function(CoreBytePairTokenizer.from_keras_hub(reference).tokenize,
                                            input_signature=spec),
             "TF Text (KerasHub)": tf.function(lambda s: reference.tokenize(s), input_signature=spec)}
    texts = corpus[1000:]
    seen = [tf.constant(texts[i * batch:(i + 1) * batch]) for i in range(4)]
    same = all(sides["core ops (tfmm)"](b).to_list() == sides["TF Text (KerasHub)"](b).to_list() for b in seen)
    warm = alternate(rounds, **{n: (lambda fn=fn: [fn(b) for b in seen]) for n, fn in sides.items()})
    fresh_batches = iter([tf.constant(texts[i:i + batch]) for i in range(4 * batch, len(texts) - batch + 1, batch)])
    fresh = {name: [] for name in sides}
    for _ in range(rounds):
        group = [next(fresh_batches) for _ in range(4)]
        for name, fn in sides.items():
            fresh[name].append(timed(lambda: [fn(b) for b in group])[0])
    n = 4 * batch
    print(f"\nbyte-level BPE ({len(rules)} merges trained on the corpus, GPT-2 special token): {n} texts in 4 "
          f"batches of {batch} (<= 160 characters, many languages); same token ids: {same}; best of {rounds} "
          "alternating rounds")
    print_table(["tokenizer", "texts/s (seen batches)", "texts/s (new batches)"],
                [[name, n / best(warm[name]), n / best(fresh[name])] for name in sides])
    core, hub = sides
    paired = lambda times: median([a / b for a, b in zip(times[core], times[hub])])  # noqa: E731
    print_ratio("bpe_seconds_core_vs_keras_hub_seen", paired(warm), "reported; median of per-round ratios")
    print_ratio("bpe_seconds_core_vs_keras_hub_new", paired(fresh), "reported; median of per-round ratios")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="texts (and images) per call (default: 32)")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds, tokenization alone (default: 20)")
    parser.add_argument("--signature-rounds", type=int, default=8,
                        help="alternating rounds, whole signature (default: 8)")
    parser.add_argument("--bpe", action="store_true", help="also compare byte-level BPE tokenizers")
    parser.add_argument("--bpe-only", action="store_true", help="only compare byte-level BPE tokenizers")
    parser.add_argument("--bpe-merges", type=int, default=1000, help="merges of the BPE trained here (default: 1000)")
    args = parser.parse_args(argv)
    if args.bpe_only:
        print_header("bench_tokenizer: core-op byte-level BPE vs KerasHub's BytePairTokenizer graph")
        bpe_comparison(args.batch, args.rounds, args.bpe_merges)
        return

    import numpy as np
    import tensorflow as tf

    from tfmm.models.text import KerasHubTextPreprocessor, minilm_path
    from tfmm.run_dir import load_run
    from tfmm.serving.archive import build_export_archive

    print_header("bench_tokenizer: core-op WordPiece vs TF Text (KerasHub), alone and in the serving signature")
    texts = real_texts(4 * args.batch)
    batches = [tf.constant(texts[i:i + args.batch]) for i in range(0, len(texts), args.batch)]
    spec = [tf.TensorSpec([None], tf.string)]
    core = KerasHubTextPreprocessor(minilm_path(), 64)
    tf_text = TFTextPreprocessor(minilm_path(), 64)
    sides = {"core ops (tfmm)": tf.function(core.__call__, input_signature=spec),
             "TF Text (KerasHub)": tf.function(lambda s: tf_text(s), input_signature=spec)}
    same = all(np.array_equal(sides["core ops (tfmm)"](b)["token_ids"], sides["TF Text (KerasHub)"](b)["token_ids"])
               for b in batches)
    calls = {name: (lambda fn=fn: [fn(b)["token_ids"].numpy() for b in batches]) for name, fn in sides.items()}
    alone = alternate(args.rounds, **calls)

    work = tempfile.mkdtemp(prefix="tfmm_bench_tokenizer_")
    _, run_dir = train_frozen_default_run(work)
    run = load_run(run_dir)
    serve = {}
    for name, preprocessor in (("core ops (tfmm)", run.preprocessor),
                               ("TF Text (KerasHub)", TFTextPreprocessor(minilm_path(), run.config.data.sequence_length))):
        run.preprocessor = preprocessor
        path = os.path.join(work, name.split()[0].lower().replace("(", ""))
        build_export_archive(run).write_out(path, verbose=False)
        serve[name] = tf.saved_model.load(path).signatures["serving_default"]
    images = [open(os.path.join(work, "data", "images", f"{i:05d}.jpg"), "rb").read() for i in range(args.batch)]
    request = dict(image_bytes=tf.constant(images), text=batches[0])
    scores = {name: fn(**request)["scores"].numpy() for name, fn in serve.items()}
    agree = float(np.abs(scores["core ops (tfmm)"] - scores["TF Text (KerasHub)"]).max())
    whole = alternate(args.signature_rounds, **{name: (lambda fn=fn: fn(**request)["scores"].numpy())
                                                for name, fn in serve.items()})
    shutil.rmtree(work, ignore_errors=True)

    n_texts = sum(int(b.shape[0]) for b in batches)
    rows = [[name, n_texts / best(alone[name]), 1000 * best(alone[name]) / len(batches),
             args.batch / best(whole[name]), best(whole[name])] for name in sides]
    print(f"\n{n_texts} real texts in {len(batches)} batches of {args.batch} (<= 160 characters, many languages), "
          f"64 tokens; same token ids: {same}; whole signature: VGG16 224 + MiniLM, batch {args.batch}, "
          f"max |score difference| {agree:.1e}; best of {args.rounds} / {args.signature_rounds} alternating rounds")
    print_table(["tokenizer", "texts/s", "ms per batch (tokenize + pack)", "rows/s (serving_default)",
                 "s per batch (serving_default)"], rows)
    print()
    core, text = sides
    # Round by round (A B A B ...), so that load from other processes affects both alike.
    paired = lambda times: median([a / b for a, b in zip(times[core], times[text])])  # noqa: E731
    print_ratio("tokenize_seconds_core_vs_tf_text", paired(alone), "reported; median of per-round ratios")
    print_ratio("signature_seconds_core_vs_tf_text", paired(whole), "<= 1.1; median of per-round ratios")
    if args.bpe:
        bpe_comparison(args.batch, args.rounds, args.bpe_merges)


if __name__ == "__main__":
    main()
