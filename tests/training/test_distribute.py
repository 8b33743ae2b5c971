"""tfmm.distribute: strategy selection, chief/worker paths; and training under real strategies.

The slow tests run `tfmm train` in fresh processes (tests/dist_worker.py): MirroredStrategy
over two logical CPUs (killed with SIGKILL mid-epoch, then resumed), and two
MultiWorkerMirroredStrategy workers on localhost compared with a single-process run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tfmm.training import distribute

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO_ROOT, "tests", "dist_worker.py")


# ----------------------------------------------------------------- unit tests (in-process)

def test_read_tf_config_and_cluster_size():
    assert distribute.read_tf_config({}) == {}
    tf_config = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"], "ps": ["d:1"]},
                 "task": {"type": "worker", "index": 1}}
    parsed = distribute.read_tf_config({"TF_CONFIG": json.dumps(tf_config)})
    assert distribute.cluster_workers(parsed) == 3  # chief + workers, not ps
    assert distribute.chief_task(parsed) == ("chief", 0)
    assert distribute.chief_task({"cluster": {"worker": ["b:1", "c:1"]}}) == ("worker", 0)
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        distribute.read_tf_config({"TF_CONFIG": "{cluster"})


def test_parse_devices():
    assert distribute.parse_devices("") == []
    assert distribute.parse_devices("GPU:0, /gpu:1") == ["/device:GPU:0", "/device:GPU:1"]
    assert distribute.parse_devices(["cpu:0"]) == ["/device:CPU:0"]
    with pytest.raises(ValueError, match="device names"):
        distribute.parse_devices("GPU:0,,GPU:1")
    with pytest.raises(ValueError, match="repeat"):
        distribute.parse_devices("GPU:0,/device:GPU:0")


@pytest.mark.parametrize("name, devices, workers, gpus, expected", [
    ("auto", [], 1, 0, "default"),
    ("auto", [], 0, 1, "default"),
    ("auto", [], 0, 4, "mirrored"),  # more than one GPU
    ("auto", [], 2, 0, "multi_worker"),  # TF_CONFIG names more than one worker
    ("auto", [], 2, 4, "multi_worker"),
    ("auto", ["/device:CPU:0", "/device:CPU:1"], 0, 0, "mirrored"),
    ("auto", ["/device:GPU:1"], 0, 4, "one_device"),
    ("mirrored", [], 0, 0, "mirrored"),
    ("one_device", [], 0, 4, "default"),
    ("multi_worker", [], 0, 0, "multi_worker"),
])
def test_choose_strategy(name, devices, workers, gpus, expected):
    assert distribute.choose_strategy(name, devices, workers, gpus) == expected


def test_select_strategy_single_process(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    default = distribute.select_strategy("auto")
    assert default.num_replicas_in_sync == 1 and not distribute.is_multi_worker(default)
    one = distribute.select_strategy("one_device", "CPU:0")
    assert type(one).__name__ == "OneDeviceStrategy"
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.select_strategy("horovod")
    with pytest.raises(ValueError, match="not visible"):
        distribute.select_strategy("mirrored", "GPU:7")
    with pytest.raises(ValueError, match="at most one device"):
        distribute.select_strategy("one_device", "CPU:0,GPU:0")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        distribute.select_strategy("multi_worker", "GPU:0")


def test_chief_paths_and_batch_math(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.select_strategy("auto")
    run_dir = str(tmp_path)
    assert distribute.is_chief(strategy) and distribute.worker_name(strategy) == "worker-0"
    assert distribute.backup_dir(run_dir, strategy) == os.path.join(run_dir, "backup", "worker-0")
    with distribute.worker_output_dir(run_dir, strategy) as out:
        assert out == run_dir
    assert distribute.allgather(strategy, [1, 2.5]) == [[1.0, 2.5]]
    four = types.SimpleNamespace(num_replicas_in_sync=4)
    assert distribute.global_batch_size(8, four) == 32
    assert distribute.scaled_learning_rate(1e-3, four, True) == pytest.approx(4e-3)
    assert distribute.scaled_learning_rate(1e-3, four, False) == 1e-3
    info = distribute.describe(strategy, 8)
    assert info["num_replicas"] == 1 and info["global_batch"] == 8 and info["is_chief"]


def test_manifest_datasets_shard_by_element(demo_data):
    """One manifest file cannot be split by file across workers: DATA sharding, so each
    worker keeps its own share of the elements."""
    import tensorflow as tf

    from tfmm.data.manifest import read_manifest
    from tfmm.data.pipeline import make_dataset
    from tfmm.config import DataConfig

    config = DataConfig(image_size=32)
    manifest = read_manifest(demo_data["val"], config)
    ds = make_dataset(manifest, config=config, modalities="image", batch_size=4)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


def test_train_config_fields_and_cli_flags():
    from tfmm.cli_parser import build_parser, config_from_args
    from tfmm.config import TrainConfig

    assert TrainConfig(devices=["GPU:0", "GPU:1"]).devices == "GPU:0,GPU:1"
    with pytest.raises(ValueError, match="save_every"):
        TrainConfig(save_every=-1)
    args = build_parser().parse_args([
        "train", "--data", "x.csv", "--output-dir", "r", "--strategy", "mirrored", "--devices", "GPU:0,GPU:1",
        "--scale-learning-rate", "--save-every", "50", "--overwrite"])
    tc = config_from_args(args).train
    assert (tc.strategy, tc.devices, tc.scale_learning_rate, tc.save_every) == ("mirrored", "GPU:0,GPU:1", True, 50)
    assert args.overwrite


# ----------------------------------------------------------------- subprocess tests

def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _train_args(demo_data, tiny_bert, tiny_vit, run_dir, *extra):
    """The tiny run's flags with the tiny ViT as image encoder (the strategy is the point here,
    not VGG16: its 15M parameters made every step and every backup of these runs slow)."""
    return ["train", "--data", demo_data["train"], "--val-data", demo_data["val"], "--output-dir", run_dir,
            "--text-encoder", f"keras_nlp:{tiny_bert}", "--image-encoder", f"keras_hub:{tiny_vit}",
            "--image-weights", "imagenet", "--image-size", "32",
            "--sequence-length", "8", "--projection-dim", "16", "--hidden-dim", "16", "--dropout", "0.1",
            "--batch-size", "8", "--learning-rate", "1e-3", "--early-stopping-patience", "0", *extra]


@pytest.fixture
def spawn():
    """Starts `tests/dist_worker.py cli` processes; kills any still running at teardown."""
    procs = []

    def start(worker_args, cli_args, log_path, tf_config=None):
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, WORKER, "cli", *worker_args, "--", *cli_args],
                                    env=_env(tf_config), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait(proc, log_path, timeout=600):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    with open(log_path) as f:
        text = f.read()
    assert rc == 0, f"exit {rc}; log tail:\n{text[-3000:]}"
    return text


def _optimizer_steps(run_dir):
    """The saved optimizer's step counter (``iterations``, the first optimizer variable)."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(os.path.join(run_dir, "model.keras")) as z:
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
            return int(f["optimizer/vars/0"][()])


def _metadata(run_dir):
    try:
        with open(os.path.join(run_dir, "backup", "worker-0", "training_metadata.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_mirrored_two_cpus_killed_mid_epoch_resumes(demo_data, tiny_bert, tiny_vit, tmp_path, spawn):
    run_dir = str(tmp_path / "run")
    args = _train_args(demo_data, tiny_bert, tiny_vit, run_dir, "--epochs", "2", "--strategy", "mirrored",
                       "--devices", "CPU:0,CPU:1", "--save-every", "2")
    log1 = str(tmp_path / "attempt1.log")
    paused = str(tmp_path / "paused")
    # 72 rows / global batch 16 = 5 steps per epoch; backups at steps 2 and 4 and at epoch ends.
    # The worker stops at the start of the third step of epoch 2 (after the step-2 backup) and
    # is killed there: the second epoch is half done, and no polling race decides where.
    proc = spawn(["--logical-cpus", "2", "--pause-at", f"1,2,{paused}"], args, log1)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not os.path.exists(paused):
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed:\n" + open(log1).read()[-3000:]
    assert os.path.exists(paused), "training did not reach epoch 2 in time:\n" + open(log1).read()[-3000:]
    meta = _metadata(run_dir)
    assert meta and meta["epoch"] == 1 and meta["batch"] > 0, meta  # a mid-epoch backup of epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(os.path.join(run_dir, "train_state.json")) as f:
        assert json.load(f)["status"] == "running"

    log2 = str(tmp_path / "attempt2.log")
    out = _wait(spawn(["--logical-cpus", "2"], args, log2), log2)
    assert "resumed at epoch 2 of 2" in out

    with open(os.path.join(run_dir, "train_state.json")) as f:
        state = json.load(f)
    assert state["status"] == "finished" and state["epochs_completed"] == 2
    assert state["attempt"] == 2 and state["resumed_from_epoch"] == 1
    dist = state["distribution"]
    assert (dist["strategy"], dist["num_replicas"], dist["global_batch"]) == ("MirroredStrategy", 2, 16)
    with open(os.path.join(run_dir, "history.csv")) as f:
        epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert epochs == ["0", "1"]  # every epoch once: none missing, the interrupted one not doubled
    with open(os.path.join(run_dir, "history.json")) as f:
        assert len(json.load(f)["val_loss"]) == 2
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    # 5 steps of epoch 1 + the steps of epoch 2 in the backup, then epoch 2 again (5 steps):
    # the optimizer state came back from the backup, and only the interrupted epoch repeated.
    assert 10 < _optimizer_steps(run_dir) < 15
    leftovers = [os.path.join(d, n) for d, _, names in os.walk(run_dir) for n in names if ".tmp" in n]
    assert not leftovers  # no half-written file (atomic writes go through *.tmp* names)

    # Nothing is corrupt: the final model and the best checkpoint load and predict.
    from tfmm.evaluation.evaluate import evaluate
    from tfmm.run_dir import load_run

    run = load_run(run_dir)
    run.model.load_weights(os.path.join(run_dir, "checkpoints", "best.weights.h5"))
    metrics = evaluate(run, demo_data["test"], report_dir=str(tmp_path / "report"))
    assert metrics["n_examples"] == 18

    # A finished run is not retrained by accident.
    from tfmm.cli import main

    assert main(_train_args(demo_data, tiny_bert, tiny_vit, run_dir, "--epochs", "2")) == 2


@pytest.mark.slow
def test_each_worker_reads_its_own_shard_of_the_manifest(tmp_path):
    """Two workers iterate the real input pipeline over one manifest file: each gets half
    of every global batch, and together they see every row once per epoch."""
    import pandas as pd

    n = 40
    pd.DataFrame({"image": [f"img{i}.png" for i in range(n)], "text": [str(i) for i in range(n)],
                  "label": ["a", "b"] * (n // 2)}).to_csv(tmp_path / "m.csv", index=False)
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    procs = [subprocess.Popen([sys.executable, WORKER, "shards", str(tmp_path / "m.csv")], cwd=REPO_ROOT,
                              env=_env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        lines = [line for line in out.splitlines() if line.startswith('{"rows"')]
        assert proc.returncode == 0 and lines, out[-3000:]
        results.append(json.loads(lines[0])["rows"])
    w0, w1 = results
    assert [len(b) for b in w0] == [len(b) for b in w1] == [8, 8, 4]  # per-replica batches of 16 // 2
    seen0, seen1 = sum(w0, []), sum(w1, [])
    assert not set(seen0) & set(seen1)  # disjoint shards
    assert sorted(seen0 + seen1) == list(range(n))  # every row once


def _log_loss(run, manifest_path):
    from tfmm.data.manifest import read_manifest
    from tfmm.tasks import get_task

    manifest = read_manifest(manifest_path, run.config.data)
    scores = run.predict_scores(manifest)
    targets = get_task(run.config.model.task).encode_targets(manifest, run.labels)
    return float(-np.mean(np.sum(targets * np.log(np.clip(scores, 1e-7, 1.0)), axis=1))), scores


@pytest.mark.slow
def test_two_workers_on_localhost_match_single_process(demo_data, tiny_bert, tiny_vit, tmp_path, spawn):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    run_dir = str(tmp_path / "multi")
    args = _train_args(demo_data, tiny_bert, tiny_vit, run_dir, "--epochs", "1", "--strategy", "multi_worker")
    procs = []
    for index in range(2):
        log = str(tmp_path / f"worker{index}.log")
        weights = str(tmp_path / f"worker{index}.npz")
        procs.append((spawn(["--dump-weights", weights], args, log,
                             {"cluster": cluster, "task": {"type": "worker", "index": index}}), log))
    # The same global batch (2 workers x 8) in one process, for comparison.
    single_dir = str(tmp_path / "single")
    single_log = str(tmp_path / "single.log")
    single = spawn([], _train_args(demo_data, tiny_bert, tiny_vit, single_dir, "--epochs", "1", "--batch-size", "16",
                                    "--strategy", "one_device"), single_log)
    logs = [_wait(p, log) for p, log in procs]
    _wait(single, single_log)

    w0, w1 = np.load(str(tmp_path / "worker0.npz")), np.load(str(tmp_path / "worker1.npz"))
    assert len(w0.files) == len(w1.files) > 10
    for key in w0.files:  # the workers trained one model together
        np.testing.assert_array_equal(w0[key], w1[key])

    with open(os.path.join(run_dir, "train_state.json")) as f:
        state = json.load(f)
    dist = state["distribution"]
    assert state["status"] == "finished"
    assert (dist["num_workers"], dist["num_replicas"], dist["global_batch"]) == (2, 2, 16)
    assert dist["worker"] == "worker-0" and dist["is_chief"]
    # Only the chief wrote the run directory; worker 1's temporary folder is gone.
    temp_dirs = [line.rsplit(" ", 1)[-1] for line in logs[1].splitlines() if "saved run to" in line]
    assert temp_dirs and "tfmm-worker-1-" in temp_dirs[0] and not os.path.exists(temp_dirs[0])
    assert not os.path.exists(os.path.join(run_dir, "backup"))

    assert _optimizer_steps(run_dir) == _optimizer_steps(single_dir) == 5  # 72 rows / global batch 16

    from tfmm.run_dir import load_run

    multi, single_run = load_run(run_dir), load_run(single_dir)
    np.testing.assert_array_equal(multi.model.get_weights()[0], w0[w0.files[0]])
    loss_multi, scores_multi = _log_loss(multi, demo_data["test"])
    loss_single, scores_single = _log_loss(single_run, demo_data["test"])
    # Same data, same global batch and seed: only dropout differs, so the two evaluate alike.
    assert abs(loss_multi - loss_single) < 0.05, (loss_multi, loss_single)
    assert np.mean(np.abs(scores_multi - scores_single)) < 0.03
