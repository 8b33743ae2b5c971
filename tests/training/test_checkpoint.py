"""Crash safety: a kill in the middle of a checkpoint write leaves the last good one intact."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfmm.files import atomic_save_model
from tfmm.training.checkpoint import AtomicBestCheckpoint, check_free_space

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import keras, numpy as np
    from tfmm.training.checkpoint import AtomicBestCheckpoint

    path = sys.argv[1]
    real_save = keras.Model.save_weights
    calls = []

    def save_then_die(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 1:
            return real_save(self, filepath, *args, **kwargs)
        with open(filepath, "wb") as f:  # the second write dies half way through
            f.write(b"\\x89HDF\\r\\n" + b"\\0" * 100)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save_weights = save_then_die
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.random.rand(64, 4), np.random.rand(64, 1)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[AtomicBestCheckpoint(path, monitor="loss")])
""")


def test_kill_during_checkpoint_write_keeps_last_good(tmp_path):
    path = str(tmp_path / "ckpt" / "best.weights.h5")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert os.path.exists(path)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.load_weights(path)  # complete and loadable: the torn write went to the temporary file
    assert any(np.abs(w.numpy()).sum() > 0 for w in model.weights)
    leftovers = [f for f in os.listdir(tmp_path / "ckpt") if ".tmp" in f]
    assert leftovers == ["best.tmp.weights.h5"]


def test_best_checkpoint_only_on_improvement_and_modes(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    cb = AtomicBestCheckpoint(str(tmp_path / "b.weights.h5"), monitor="val_loss")
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_loss": 1.0})
    first = os.path.getmtime(tmp_path / "b.weights.h5")
    model.layers[0].kernel.assign(np.ones((2, 1)))
    cb.on_epoch_end(1, {"val_loss": 2.0})  # worse: not written
    loaded = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    loaded.load_weights(str(tmp_path / "b.weights.h5"))
    assert not np.allclose(loaded.layers[0].kernel.numpy(), 1.0)
    cb.on_epoch_end(2, {"val_loss": 0.5})
    loaded.load_weights(str(tmp_path / "b.weights.h5"))
    np.testing.assert_allclose(loaded.layers[0].kernel.numpy(), 1.0)
    assert os.path.getmtime(tmp_path / "b.weights.h5") >= first
    assert AtomicBestCheckpoint("x.weights.h5", monitor="val_f1").mode == "max"
    with pytest.raises(ValueError, match="mode must be one of"):
        AtomicBestCheckpoint("x.weights.h5", mode="up")


def test_atomic_save_model_and_free_space(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    atomic_save_model(model, str(tmp_path / "m.keras"))
    assert os.listdir(tmp_path) == ["m.keras"]
    keras.models.load_model(str(tmp_path / "m.keras"))
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError, match="not enough free disk space .* MiB free"):
        check_free_space(model, str(tmp_path))


def test_best_checkpoint_writes_at_most_every_interval_and_records_what_it_holds(tmp_path):
    from tfmm.training.checkpoint import read_best_info

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "b.weights.h5")
    cb = AtomicBestCheckpoint(path, monitor="val_loss", min_interval=3600)
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_loss": 1.0})  # the first better epoch is written at once
    assert read_best_info(path) == {"epoch": 1, "monitor": "val_loss", "value": 1.0}
    model.layers[0].kernel.assign(np.full((2, 1), 3.0))
    cb.on_epoch_end(1, {"val_loss": 0.5})  # better, but within the interval: kept in memory
    assert read_best_info(path)["epoch"] == 1
    model.layers[0].kernel.assign(np.full((2, 1), 7.0))
    cb.on_epoch_end(2, {"val_loss": 0.9})
    cb.on_train_end()  # writes epoch 2's weights, and leaves the model as it was
    assert read_best_info(path) == {"epoch": 2, "monitor": "val_loss", "value": 0.5}
    loaded = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    loaded.load_weights(path)
    np.testing.assert_allclose(loaded.layers[0].kernel.numpy(), 3.0)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), 7.0)
