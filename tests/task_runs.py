"""Session fixtures: one tiny trained run and one checked export per task, shared by the tests
that need a run of a given task (the contract test, the export tests).

``task_run(name)`` trains on first use and returns the same ``TrainResult`` afterwards;
``task_export(name)`` exports that run once (with the export checks) and returns the
``ExportResult``. ``task_data(name)`` gives the manifests they were trained on.
"""

import os

import numpy as np
import pandas as pd
import pytest

import tfmm
from tests.conftest import make_tiny_config


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
            config = make_tiny_config(tiny_bert).replace(
                model={"task": name, "freeze_image": True, "freeze_text": True},
                data={"negatives": 1 if name == "matching" else 0},
            )
            out = tmp_path_factory.mktemp(f"task_{name}") / "run"
            cache[name] = tfmm.train(config, data["train"], data["val"], str(out), verbose=0)
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
