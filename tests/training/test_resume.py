"""tfmm.resume: run-state marker, backup repair, epoch-log trimming, resume decisions.

The end-to-end kill-and-resume test (SIGKILL mid-epoch, under MirroredStrategy) is in
tests/training/test_distribute.py.
"""

import json
import os

import keras
import numpy as np
import pytest

from tfmm.config import RunConfig, save_config
from tfmm.training import distribute, resume

HEADER = "epoch,loss,val_loss\n"


def _strategy():
    return distribute.select_strategy("one_device")


def _write_backup(folder, epoch, batch=0, *, bkp=False):
    """A real backup: the weights of a tiny model and Keras' metadata file."""
    os.makedirs(folder, exist_ok=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    suffix = ".bkp" if bkp else ""
    model.save_weights(os.path.join(folder, "latest.weights.h5"))
    if bkp:
        os.replace(os.path.join(folder, "latest.weights.h5"), os.path.join(folder, "latest.weights.h5.bkp"))
    with open(os.path.join(folder, "training_metadata.json" + suffix), "w") as f:
        json.dump({"epoch": epoch, "batch": batch}, f)


def test_trim_history_csv_keeps_each_finished_epoch_once(tmp_path):
    path = str(tmp_path / "history.csv")
    with open(path, "w") as f:  # epoch 1 logged twice (an earlier resume), epoch 2 past the backup, a cut line
        f.write(HEADER + "0,2.0,2.1\n1,1.5,1.9\n1,1.4,1.8\n2,1.2,1.7\n3,1.1")
    history = resume.trim_history_csv(path, 2)
    assert history == {"loss": [2.0, 1.4], "val_loss": [2.1, 1.8]}
    with open(path) as f:
        assert f.read().splitlines() == ["epoch,loss,val_loss", "0,2.0,2.1", "1,1.4,1.8"]
    assert resume.trim_history_csv(path, 0) == {}
    assert resume.trim_history_csv(str(tmp_path / "none.csv"), 3) == {}


def test_repair_backup_falls_back_to_previous_then_removes(tmp_path):
    folder = str(tmp_path / "backup" / "worker-0")
    _write_backup(folder, 3)
    resume.repair_backup(folder)
    assert resume.backup_epoch(folder) == 3

    _write_backup(folder, 2, bkp=True)
    with open(os.path.join(folder, "latest.weights.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n half a file")  # killed while writing the weights
    resume.repair_backup(folder)
    assert resume.backup_epoch(folder) == 2

    with open(os.path.join(folder, "training_metadata.json"), "w") as f:
        f.write('{"epoch": ')  # killed while writing the metadata, and no usable previous pair
    os.remove(os.path.join(folder, "latest.weights.h5.bkp"))
    resume.repair_backup(folder)
    assert not os.path.exists(folder) and resume.backup_epoch(folder) is None


def test_config_differences_ignore_resumable_options():
    old = RunConfig().replace(train={"epochs": 3, "strategy": "auto"}).to_dict()
    new = RunConfig().replace(train={"epochs": 5, "strategy": "mirrored", "save_every": 10},
                              model={"num_classes": 4}).to_dict()
    assert resume.config_differences(old, new) == ["train.epochs: 3 -> 5"]


def test_prepare_run_fresh_resume_finished_overwrite(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    config = RunConfig().replace(train={"epochs": 4})
    strategy = _strategy()

    start = resume.prepare_run(run_dir, config, strategy)
    assert (start.initial_epoch, start.attempt, start.chief) == (0, 1, True)
    assert resume.read_state(run_dir)["status"] == "running"

    # Killed during epoch 3: the backup holds 2 epochs, the log also has a row for epoch 3.
    save_config(config, os.path.join(run_dir, "config.yaml"))
    _write_backup(start.backup_dir, 2)
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save_weights(
        os.path.join(run_dir, "checkpoints", "best.weights.h5"))
    with open(os.path.join(run_dir, "history.csv"), "w") as f:
        f.write(HEADER + "0,2.0,2.1\n1,1.5,1.9\n2,1.4,1.85\n")
    start = resume.prepare_run(run_dir, config, strategy)
    assert (start.initial_epoch, start.attempt) == (2, 2)
    assert start.prior_history == {"loss": [2.0, 1.5], "val_loss": [2.1, 1.9]}
    assert start.best == {"val_loss": 1.9, "loss": 1.5}  # the checkpoint to beat, from epochs 1-2 only
    # A checkpoint that records holding epoch 1 (written at most every N seconds): beat that.
    with open(os.path.join(run_dir, "checkpoints", "best.json"), "w") as f:
        f.write('{"epoch": 1, "monitor": "val_loss", "value": 2.1}')
    assert resume.prepare_run(run_dir, config, strategy).best == {"val_loss": 2.1, "loss": 1.5}

    with pytest.raises(ValueError, match=r"different config \(train.epochs: 4 -> 6\)"):
        resume.prepare_run(run_dir, config.replace(train={"epochs": 6}), strategy)

    resume.finish_run(start, epochs_completed=4)
    assert not os.path.exists(start.backup_dir)
    assert resume.read_state(run_dir)["status"] == "finished"
    with pytest.raises(resume.RunFinishedError, match="already holds a finished run .4 of 4 epochs.*--overwrite"):
        resume.prepare_run(run_dir, config, strategy)

    with open(os.path.join(run_dir, "notes.txt"), "w") as f:
        f.write("mine")
    start = resume.prepare_run(run_dir, config, strategy, overwrite=True)
    assert (start.initial_epoch, start.attempt) == (0, 1)
    assert sorted(os.listdir(run_dir)) == ["notes.txt", "train_state.json"]  # only tfmm's files removed


def test_training_backup_saves_every_n_steps_and_at_epoch_ends(tmp_path):
    folder = str(tmp_path / "backup")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(resume.backup_epoch(folder))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((10, 2), "float32"), np.zeros((10, 1), "float32")
    backup = resume.TrainingBackup(folder, save_freq=3)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[backup, Spy()])
    # 5 steps per epoch: saved after steps 3 and 5 (epoch end) of epoch 1, then during epoch 2.
    assert seen[:3] == [None, None, 0]
    assert resume.backup_epoch(folder) == 2  # the epoch-end backup: epoch 2 done
    assert os.path.exists(folder)  # kept after fit: the run deletes it after the final save
    assert os.path.exists(os.path.join(folder, "latest.weights.h5.bkp"))

    restored = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    restored.compile("sgd", "mse")
    history = restored.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[resume.TrainingBackup(folder)])
    assert len(history.history["loss"]) == 1  # resumed after epoch 2 of 3
    assert int(restored.optimizer.iterations.numpy()) == 15  # the optimizer state came back too
