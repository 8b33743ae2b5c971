"""Shows the tf.data autotuner stall that makes tfmm turn it off by default.

In TF 2.21, deleting a ``tf.data`` iterator whose pipeline uses ``AUTOTUNE`` can block
until the autotuner's background thread ends its current wait; the waits double from
10 ms (so the iterator is released at ~10.2 s, ~20.5 s, ~41 s... after it was created).
Keras ``fit`` and ``predict`` delete an iterator at every epoch / call, so a pipeline can
stall for seconds to tens of seconds at each epoch end. It is a race: it shows when the
cores are busy (as during training), not on an idle machine. With
``options.autotune.enabled = False`` (tfmm's default, ``DataConfig.tf_data_autotune``)
deletion is immediate, and throughput is unchanged (see RESULTS.md).

Run: ``python benchmarks/repro_autotune_stall.py`` (about 75 s; needs no tfmm). Rerun after
upgrading TensorFlow: if no deletion blocks with the autotuner on, the default can go back.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402


def consume_then_delete(autotune: bool, seconds_per_element: float) -> tuple:
    ds = tf.data.Dataset.range(6).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    ds = ds.with_options(options)
    busy = tf.random.uniform((768, 768))
    start = time.perf_counter()
    iterator = iter(ds)
    for _ in iterator:  # a slow consumer keeping every core busy, like a training step
        deadline = time.perf_counter() + seconds_per_element
        while time.perf_counter() < deadline:
            tf.linalg.matmul(busy, busy).numpy()
    consumed = time.perf_counter()
    del iterator
    return consumed - start, time.perf_counter() - consumed


if __name__ == "__main__":
    print(f"tensorflow {tf.__version__}")
    for autotune in (True, False):
        for per_element in (1.7, 2.0, 2.3):
            consumed, deletion = consume_then_delete(autotune, per_element)
            print(f"autotune={autotune!s:5}  consumed in {consumed:5.2f} s, iterator deletion took "
                  f"{deletion:5.2f} s")
