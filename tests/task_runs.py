"""Session fixtures: one tiny trained run and one checked export per task, shared by the tests
that need a run of a given task (the contract test, the export tests).

``task_run(name)`` trains through `tfmm train` on first use (so the task CLI tests use the
same runs) and returns the same :class:`CliRun` afterwards; ``task_export(name)`` exports
that run once (with the export checks) and returns the ``ExportResult``. ``task_data(name)``
gives the manifests they were trained on.
"""

import contextlib
import dataclasses
import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_train_args
from tfmm import cli
from tfmm.config import RunConfig, load_config
from tfmm.data.manifest import load_labels
from tfmm.run_dir import CONFIG_FILE, LABELS_FILE

# Flags each task's run adds to the tiny run's (frozen encoders: the task plumbing is the point).
TASK_FLAGS = {
    "matching": ["--negatives", "1"],
    "contrastive": ["--epochs", "2"],  # two epochs: the history holds one row per epoch
}


@dataclasses.dataclass
class CliRun:
    """A run trained by `tfmm train`, read back from its folder."""

    run_dir: str
    config: RunConfig
    history: dict
    labels: list
    stdout: str


def write_task_manifests(demo_data, name) -> dict:
    """Train (24 rows) and validation (8 rows) manifests of the demo images, labeled for
    ``name``, beside the demo manifests (image paths stay relative)."""
    paths = {}
    for split, n in (("train", 24), ("val", 8)):
        df = pd.read_csv(demo_data[split]).head(n)
        colour = df["label"].str.split(" ").str[0]
        if name == "binary":
            df["label"] = np.where(colour == "red", "red", "other")
        elif name == "multilabel":
            df["label"] = df["label"].str.replace(" ", "|")  # "red|circle": colour and shape
        elif name in ("matching", "contrastive"):
            df = df.drop(columns=["label"])  # positive pairs; matching makes negatives
        paths[split] = os.path.join(os.path.dirname(demo_data[split]), f"task_{name}_{split}.csv")
        df.to_csv(paths[split], index=False)
    return paths


@pytest.fixture(scope="session")
def task_data(demo_data):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = write_task_manifests(demo_data, name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def task_run(task_data, tiny_bert, tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            data = task_data(name)
            run_dir = str(tmp_path_factory.mktemp(f"task_{name}") / "run")
            args = tiny_train_args(tiny_bert, data["train"], data["val"], run_dir, "--task", name,
                                   "--freeze-image", "--freeze-text", *TASK_FLAGS.get(name, []))
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = cli.main(args)
            assert code == 0, printed.getvalue()
            with open(os.path.join(run_dir, "history.json")) as f:
                history = json.load(f)
            cache[name] = CliRun(run_dir, load_config(os.path.join(run_dir, CONFIG_FILE)), history,
                                 load_labels(os.path.join(run_dir, LABELS_FILE)), printed.getvalue())
        return cache[name]

    return get


@pytest.fixture(scope="session")
def task_export(task_run, tmp_path_factory):
    from tfmm.serving.export import export_for_serving

    cache = {}

    def get(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(f"task_{name}_export") / "export"
            cache[name] = export_for_serving(task_run(name).run_dir, str(root), warmup_records=3)
        return cache[name]

    return get
