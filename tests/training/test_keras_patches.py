"""tfmm.training.keras_patches: the version gate, and proof that the pinned Keras still needs each fix.

When ``test_pinned_keras_still_needs_each_fix`` fails because upstream Keras fit works
unpatched, delete tfmm/training/keras_patches.py and its call in tfmm/training/train.py.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import pytest

from tfmm.training import keras_patches

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO_ROOT, "tests", "dist_worker.py")


def test_version_gate():
    assert keras_patches.keras_version("3.15.1") == (3, 15)
    assert keras_patches.keras_version("3.16.0rc1") == (3, 16)
    assert keras_patches.needs_distribute_fixes("3.15.1")
    assert not keras_patches.needs_distribute_fixes("3.16.0")
    assert not keras_patches.needs_distribute_fixes("2.15.0")
    assert keras_patches.needs_distribute_fixes(keras.__version__), (
        f"keras {keras.__version__} is outside keras_patches.BROKEN_KERAS {keras_patches.BROKEN_KERAS}: check whether "
        "test_pinned_keras_still_needs_each_fix still fails without the patch, then widen or drop it")


def test_unknown_fix_is_refused():
    with pytest.raises(ValueError, match="fixes must be among"):
        keras_patches.apply_distribute_fixes(["everything"])


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_pinned_keras_still_needs_each_fix():
    """Two MultiWorkerMirroredStrategy workers on localhost fit a tiny dict-input model:
    unpatched, with the symbolic-build fix only, and with both fixes."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for index in range(2):
        env_i = dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, WORKER, "keras-bug"], env=env_i, cwd=REPO_ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        results = [json.loads(line) for line in out.splitlines() if line.startswith('{"fixes"')]
        assert proc.returncode == 0 and len(results) == 3, out[-3000:]
        unpatched, symbolic_only, both = results
        assert not unpatched["ok"] and "Attempt to convert a value" in unpatched["error"], unpatched
        assert not symbolic_only["ok"] and "Invalid reduction dimension 0" in symbolic_only["error"], symbolic_only
        assert both["ok"], both
