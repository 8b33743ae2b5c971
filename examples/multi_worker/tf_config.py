"""Prints the TF_CONFIG for one worker of an N-machine MultiWorkerMirroredStrategy cluster.

Every machine runs the same `tfmm train` command with its own TF_CONFIG; the cluster list
is the same everywhere, only the task index differs. Worker 0 is the chief (it writes the
run directory), unless you add a separate `--chief HOST:PORT`.

    # on machine i (0 .. N-1), same --workers list everywhere:
    export TF_CONFIG=$(python examples/multi_worker/tf_config.py \
        --workers 10.0.0.1:12345,10.0.0.2:12345,10.0.0.3:12345 --index i)
    tfmm train --data /shared/train.csv --val-data /shared/val.csv \
        --output-dir /shared/runs/r1 --strategy multi_worker --batch-size 32 --scale-learning-rate

Each machine needs the manifest and images at the same paths (a shared or copied folder).
The run directory may be shared (the chief writes it; each worker only adds its own
backup/worker-<i>/) or local to each machine (then only the chief's holds the model).
"""

import argparse
import json


def tf_config(workers: list, index: int, chief: str = "", task_type: str = "worker") -> dict:
    """The TF_CONFIG dict for task ``task_type`` ``index`` of a cluster of ``workers``."""
    cluster = {"worker": workers}
    if chief:
        cluster["chief"] = [chief]
    size = len(cluster[task_type]) if task_type in cluster else 0
    if not 0 <= index < size:
        raise SystemExit(f"--index must be in [0, {size}) for task type {task_type!r}; received {index}")
    return {"cluster": cluster, "task": {"type": task_type, "index": index}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", required=True, help="comma-separated HOST:PORT of every worker, in order")
    parser.add_argument("--index", type=int, required=True, help="this machine's position in --workers")
    parser.add_argument("--chief", default="", help="optional HOST:PORT of a separate chief task")
    parser.add_argument("--task-type", default="worker", choices=["worker", "chief"])
    args = parser.parse_args()
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    print(json.dumps(tf_config(workers, args.index, args.chief, args.task_type)))


if __name__ == "__main__":
    main()
