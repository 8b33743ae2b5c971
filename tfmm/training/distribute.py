"""Distribution: choosing a ``tf.distribute`` strategy, and who writes what where.

- :func:`select_strategy` turns ``--strategy`` / ``--devices`` into a strategy. ``auto``
  picks ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker,
  ``MirroredStrategy`` when more than one GPU (or ``--devices`` lists several devices) is
  visible, else the default single-device strategy.
- :func:`is_chief` / :func:`worker_name`: under multi-worker training every worker runs
  the same code, but only the chief writes the run directory; the others write to a
  temporary folder (:func:`worker_output_dir`) that is deleted afterwards.
- :func:`backup_dir`: each worker keeps its own crash-recovery backup in the run
  directory (a shared one fails with ``BlockingIOError: unable to lock file``).
- :func:`allgather`: workers agree on small facts (is the run finished, which epoch
  do the backups hold) before training starts.

``MultiWorkerMirroredStrategy`` must be created before TensorFlow runs its first op, so
call :func:`select_strategy` first thing (``tfmm.train`` does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Optional, Sequence

import tensorflow as tf

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
BACKUP_DIR = "backup"


def read_tf_config(environ=None) -> dict:
    """The parsed ``TF_CONFIG`` environment variable (``{}`` when unset).

    Raises:
        ValueError: ``TF_CONFIG`` is not a JSON object.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG must be JSON like {{\"cluster\": ..., \"task\": ...}}; received {raw!r} ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object; received {raw!r}")
    return value


def cluster_workers(tf_config: dict) -> int:
    """How many training tasks (``chief`` + ``worker``) ``TF_CONFIG`` names."""
    cluster = tf_config.get("cluster") or {}
    return sum(len(cluster.get(kind) or []) for kind in ("chief", "worker"))


def parse_devices(devices) -> list:
    """``"GPU:0,GPU:1"`` (or a list) -> ``["/device:GPU:0", "/device:GPU:1"]``.

    Raises:
        ValueError: an entry is not a device name.
    """
    if not devices:
        return []
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = []
    for item in (i.strip() for i in items):
        try:
            spec = tf.DeviceSpec.from_string(item if item.startswith("/") else "/" + item)
        except ValueError:
            spec = None
        if not item or spec is None or spec.device_type is None:
            raise ValueError(f"devices must be device names like 'GPU:0,GPU:1' or '/cpu:0'; received {item!r}")
        out.append(f"/device:{spec.device_type}:{spec.device_index or 0}")
    if len(set(out)) != len(out):
        raise ValueError(f"devices must not repeat a device; received {devices!r}")
    return out


def _check_devices_exist(devices: Sequence[str]) -> None:
    known = {d.name for d in tf.config.list_logical_devices()}
    missing = [d for d in devices if d not in known]
    if missing:
        raise ValueError(f"devices {missing} are not visible; visible devices: {sorted(known)}")


def choose_strategy(name: str, devices: Sequence[str], workers: int, gpus: int) -> str:
    """The strategy kind for ``--strategy name``: ``multi_worker``, ``mirrored``,
    ``one_device`` or ``default`` (pure: from the device list, the number of workers in
    ``TF_CONFIG`` and the number of visible GPUs).

    Raises:
        ValueError: unknown name, or devices that do not fit the strategy.

    Example:
        >>> choose_strategy("auto", [], workers=2, gpus=0)
        'multi_worker'
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}; received {name!r}")
    if name == "multi_worker" or (name == "auto" and workers > 1):
        if devices:
            raise ValueError(
                f"devices cannot be chosen for multi_worker (received {list(devices)}); each worker uses "
                "all its GPUs: limit them with CUDA_VISIBLE_DEVICES"
            )
        return "multi_worker"
    if name == "one_device":
        if len(devices) > 1:
            raise ValueError(f"one_device takes at most one device; received {list(devices)}")
        return "one_device" if devices else "default"
    if name == "mirrored" or len(devices) > 1 or (not devices and gpus > 1):
        return "mirrored"
    return "one_device" if devices else "default"


def select_strategy(name: str = "auto", devices=None) -> tf.distribute.Strategy:
    """Returns the ``tf.distribute`` strategy for ``--strategy`` and ``--devices``.

    ``auto`` picks ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one
    worker, ``MirroredStrategy`` when more than one GPU is visible (or ``devices`` lists
    several), else the default strategy (see :func:`choose_strategy`).

    Args:
        name: ``auto``, ``one_device``, ``mirrored`` or ``multi_worker``.
        devices: devices for ``mirrored`` / ``one_device`` (``"GPU:0,GPU:1"`` or a list);
            empty for all GPUs (or the CPU).

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        ValueError: unknown name, bad or invisible devices, or devices with ``multi_worker``.
        RuntimeError: ``multi_worker`` after TensorFlow already ran ops in this process.

    Example:
        >>> strategy = select_strategy("mirrored", "GPU:0,GPU:1")
        >>> strategy.num_replicas_in_sync
        2
    """
    device_list = parse_devices(devices)
    workers = cluster_workers(read_tf_config())
    # Counting physical GPUs does not start TensorFlow (MultiWorkerMirroredStrategy needs that).
    kind = choose_strategy(name, device_list, workers, len(tf.config.list_physical_devices("GPU")))
    if kind == "multi_worker":
        if workers <= 1:
            logger.warning("strategy multi_worker without a multi-worker TF_CONFIG: training on this machine only")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(
                f"{e}: MultiWorkerMirroredStrategy must be created before TensorFlow runs any op. "
                "Call tfmm.train (or select_strategy) first in the process, or pass strategy=."
            ) from e
    if workers > 1:
        logger.warning("TF_CONFIG names %d workers but strategy %r trains this process alone; use "
                       "--strategy multi_worker (or auto) to train them together", workers, name)
    if device_list:
        _check_devices_exist(device_list)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(device_list or None)
    if kind == "one_device":
        return tf.distribute.OneDeviceStrategy(device_list[0])
    return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a ``MultiWorkerMirroredStrategy`` that spans more than one worker."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(spec.get(kind) or ()) for kind in ("chief", "worker")) > 1


def task_of(strategy: tf.distribute.Strategy) -> tuple:
    """``(task_type, task_id)`` of this process: ``("worker", 1)``; ``(None, 0)`` when local."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def chief_task(tf_config: dict) -> tuple:
    """The chief's ``(task_type, task_id)``: the ``chief`` task, else ``worker`` 0."""
    cluster = tf_config.get("cluster") or {}
    return ("chief", 0) if cluster.get("chief") else ("worker", 0)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process writes the run directory (always True outside multi-worker)."""
    if strategy is None or not is_multi_worker(strategy):
        return True
    task_type, task_id = task_of(strategy)
    if task_type is None:
        return True
    return (task_type, task_id) == chief_task(read_tf_config())


def worker_name(strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """``worker-0``, ``worker-1``, ``chief-0``...; ``worker-0`` for a single process."""
    task_type, task_id = task_of(strategy) if strategy is not None else (None, 0)
    return f"{task_type or 'worker'}-{task_id}"


def backup_dir(run_dir: str, strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """This worker's own crash-recovery folder: ``RUN/backup/<worker_name>``."""
    return os.path.join(run_dir, BACKUP_DIR, worker_name(strategy))


@contextlib.contextmanager
def worker_output_dir(run_dir: str, strategy: Optional[tf.distribute.Strategy] = None):
    """Yields where this worker writes run outputs: ``run_dir`` for the chief, else a
    temporary folder deleted on exit (all workers must still save, since saving
    distributed variables can run collective ops on every worker).

    Example:
        >>> with worker_output_dir("runs/a", strategy) as out:
        ...     model.save(os.path.join(out, "model.keras"))
    """
    if is_chief(strategy):
        yield run_dir
        return
    tmp = tempfile.mkdtemp(prefix=f"tfmm-{worker_name(strategy)}-")
    logger.info("%s is not the chief: writing its outputs to temporary %s", worker_name(strategy), tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy) -> int:
    """Global batch = per-replica batch x replicas in sync."""
    return per_replica * strategy.num_replicas_in_sync


def scaled_learning_rate(learning_rate: float, strategy: tf.distribute.Strategy, scale: bool) -> float:
    """Linear scaling rule: ``learning_rate x replicas`` when ``scale``, else unchanged."""
    return learning_rate * strategy.num_replicas_in_sync if scale else learning_rate


def _devices(strategy: tf.distribute.Strategy) -> list:
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: TensorFlow's default placement
        return [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["/device:CPU:0"]


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name: ``MultiWorkerMirroredStrategy``, ``MirroredStrategy``,
    ``OneDeviceStrategy`` or ``default``."""
    names = ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
             (tf.distribute.MirroredStrategy, "MirroredStrategy"),
             (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy"))
    return next((name for cls, name in names if isinstance(strategy, cls)), "default")


def describe(strategy: tf.distribute.Strategy, per_replica_batch: int) -> dict:
    """What a run records about its distribution (``train_state.json``, logs)."""
    return {
        "strategy": strategy_name(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "num_workers": max(1, cluster_workers(read_tf_config())) if is_multi_worker(strategy) else 1,
        "devices": _devices(strategy),
        "per_replica_batch": per_replica_batch,
        "global_batch": global_batch_size(per_replica_batch, strategy),
        "worker": worker_name(strategy),
        "is_chief": is_chief(strategy),
    }


def allgather(strategy: tf.distribute.Strategy, values: Sequence[float]) -> list:
    """Every worker's ``values`` as floats, one row per replica (just ``[values]`` outside
    multi-worker). A collective op: every worker must call it, in the same order.

    Example:
        >>> rows = allgather(strategy, [finished, epoch])  # the same rows on every worker
    """
    if not is_multi_worker(strategy):
        return [[float(v) for v in values]]
    local = tf.constant([[float(v) for v in values]], dtype=tf.float64)
    return strategy.gather(local, axis=0).numpy().tolist()


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Waits until every worker gets here (no-op outside multi-worker): a worker that
    exits while another still saves takes the cluster's coordination service down."""
    allgather(strategy, [0])
