"""Shared helpers for the benchmark scripts: data, timing, the machine, tables.

Every benchmark measures its two sides in the same process, alternating them
(A B A B ...) and keeping the best round of each, so that load from other processes on a
shared machine affects both sides alike. Only ratios are meaningful across machines.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's tfmm

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # retracing notices from model.predict are expected here


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time in ``times`` (training, validation and the callbacks
    before this one)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def machine_info() -> dict:
    """CPU, core count, load average and library versions, for RESULTS.md."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "gpus": len(gpus), "python": platform.python_version(), "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def print_header(title: str) -> None:
    info = machine_info()
    print(f"== {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def print_table(headers, rows) -> None:
    """A plain-text table; floats with 3 significant decimals."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def print_ratio(name: str, value: float, goal: str) -> None:
    """The line each benchmark ends with: ``ratio NAME = VALUE (goal GOAL)``."""
    print(f"ratio {name} = {value:.2f} (goal {goal})")


def timed(fn, *args, **kwargs):
    """``(seconds, result)`` of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def alternate(rounds: int, **sides) -> dict:
    """Runs each side's zero-argument callable once per round, in turn.

    Returns:
        ``{side: [seconds per round]}``.
    """
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(timed(fn)[0])
    return times


def fit_step_seconds(model, dataset, steps: int) -> float:
    """Seconds that ``model.fit`` takes for ``steps`` steps after its first one.

    Timed between consecutive ``on_train_batch_end`` calls inside one ``fit`` call, so it
    holds the whole step (iterator, train function, metrics, callbacks) but not ``fit``'s
    per-call set-up (a new iterator and its trace), paid once per training run.
    """
    import keras

    ends = []

    class _Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[_Clock()])
    return ends[-1] - ends[0]


def best(values) -> float:
    return min(values)


def median(values) -> float:
    return statistics.median(values)


def write_jpeg_dataset(folder: str, n: int, *, size: int = 256, seed: int = 0, quality: int = 90) -> str:
    """``n`` JPEG photos-like images (noise + a shape) with captions; returns the manifest.

    Labels are ``"<colour> <shape>"`` as in the demo (colour only in the caption).
    """
    from tfmm.data.demo_data import COLOURS, SHAPES, TEMPLATES, draw_shape

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    manifest = os.path.join(folder, "manifest.csv")
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", "label"])
        for i in range(n):
            k = i % (len(COLOURS) * len(SHAPES))
            colour, shape = COLOURS[k // len(SHAPES)], SHAPES[k % len(SHAPES)]
            image = draw_shape(rng, shape, size)
            pixels = np.asarray(image).astype(np.int16) + rng.integers(-20, 20, (size, size, 3))
            rel = f"images/{i:05d}.jpg"
            from PIL import Image

            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, rel), quality=quality)
            template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
            writer.writerow([rel, template.format(c=colour), f"{colour} {shape}"])
    return manifest


def default_config(**model):
    """The default model (VGG16 at 224 + MiniLM, 64 tokens) with random image weights
    (ImageNet weights cannot be downloaded offline; speed is the same)."""
    from tfmm.config import RunConfig

    return RunConfig().replace(model={"image_weights": "none", **model})


def train_frozen_default_run(work: str, n: int = 36) -> tuple:
    """Trains the default model with both encoders frozen for one epoch on ``n`` JPEGs
    (seconds, thanks to the feature cache); returns ``(manifest_path, run_dir)``."""
    from tfmm.training.train import train

    manifest = write_jpeg_dataset(os.path.join(work, "data"), n, size=256)
    config = default_config(freeze_image=True, freeze_text=True).replace(
        train={"epochs": 1, "batch_size": 8, "early_stopping_patience": 0})
    run_dir = os.path.join(work, "run")
    train(config, manifest, None, run_dir, verbose=0)
    return manifest, run_dir
