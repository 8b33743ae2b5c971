"""Shared fixtures: tiny models and tiny data made in tmp folders (no network).

The expensive ones (a trained run, its export, the demo's three runs) are session-scoped:
each is made once and shared by every test that needs it, and no test changes their files.
"""

import contextlib
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

import tfmm  # noqa: E402
from tfmm import cli
from tfmm.config import RunConfig  # noqa: E402
from tfmm.data.demo_data import write_demo_dataset  # noqa: E402
from tfmm.run_dir import LoadedRun, load_run  # noqa: E402
from tfmm.serving import saved_model

pytest_plugins = ["tests.task_runs"]  # task_data, task_run, task_export: one run per task

WORDS = (
    "a one this thing is painted the colour here it should be shown in as caption says "
    "imagine coloured picture of something red green blue circle square triangle photo"
).split()


def make_tiny_bert_preset(folder: str) -> str:
    """Writes a tiny KerasHub BERT preset (1 layer, width 16) with a small vocabulary.

    One transformer layer runs the same code as several; each layer adds seconds to
    every training run's graph tracing."""
    import keras_hub

    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [",", "."]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32,
    )
    backbone.save_to_preset(folder)
    tokenizer.save_to_preset(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """Path of a tiny BERT preset folder; use as ``keras_nlp:<path>``."""
    return make_tiny_bert_preset(str(tmp_path_factory.mktemp("tiny_bert")))


def make_tiny_vit_preset(folder: str) -> str:
    """Writes a tiny KerasHub ViT image preset (1 layer, width 8, 16-px patches of 32-px images;
    LayerNorm only, no BatchNorm) with its image converter (pixels to [-1, 1]).

    For tests where the image branch only has to exist (distribution, resuming): VGG16's 15M
    parameters cost seconds per step and per backup; this one has a few thousand."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=16, num_layers=1, num_heads=2,
                                 hidden_dim=8, mlp_dim=16).save_to_preset(folder)
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0).save_to_preset(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> str:
    """Path of a tiny ViT preset folder (:func:`make_tiny_vit_preset`); use as ``keras_hub:<path>``."""
    return make_tiny_vit_preset(str(tmp_path_factory.mktemp("tiny_vit")))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """A small demo dataset (32x32 PNGs): ``{"train", "val", "test"}`` -> manifest path."""
    return write_demo_dataset(str(tmp_path_factory.mktemp("demo")), n_train=72, n_val=18, n_test=18)


@pytest.fixture
def tiny_config(tiny_bert) -> RunConfig:
    """A RunConfig that builds in seconds: VGG16 at 32x32, tiny BERT, 8-token text."""
    return make_tiny_config(tiny_bert)


def make_tiny_config(tiny_bert: str) -> RunConfig:
    """The ``tiny_config`` fixture's config, for session-scoped fixtures."""
    return RunConfig().replace(
        data={"image_size": 32, "sequence_length": 8},
        model={"text_encoder": f"keras_nlp:{tiny_bert}", "image_weights": "none",
               "projection_dim": 16, "hidden_dim": 16, "dropout": 0.1},
        train={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
    )


def tiny_train_args(tiny_bert: str, train: str, val: str, run_dir: str, *extra) -> list:
    """`tfmm train` arguments for ``make_tiny_config``'s run (``extra`` flags override)."""
    return ["train", "--data", train, "--val-data", val, "--output-dir", run_dir,
            "--text-encoder", f"keras_nlp:{tiny_bert}", "--image-weights", "none", "--image-size", "32",
            "--sequence-length", "8", "--projection-dim", "16", "--hidden-dim", "16", "--dropout", "0.1",
            "--epochs", "1", "--batch-size", "8", "--learning-rate", "1e-3", *extra]


# --- session fixtures: one trained run, exported through the CLI -------------------------------

@pytest.fixture(scope="session")
def cli_trained_run(tiny_bert, demo_data, tmp_path_factory) -> dict:
    """The session's tiny run (``make_tiny_config``), trained once through `tfmm train`:
    ``{"run_dir", "code": exit status, "stdout": what the command printed}``."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "tiny")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(tiny_train_args(tiny_bert, demo_data["train"], demo_data["val"], run_dir))
    return {"run_dir": run_dir, "code": code, "stdout": printed.getvalue()}


@pytest.fixture(scope="session")
def trained_run(cli_trained_run) -> str:
    assert cli_trained_run["code"] == 0, cli_trained_run["stdout"]
    return cli_trained_run["run_dir"]


@pytest.fixture(scope="session")
def export_root(trained_run, demo_data, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("saved_models") / "tiny")
    code = cli.main(["export", "--model", trained_run, "--export-dir", root,
                     "--warmup-data", demo_data["val"], "--warmup-records", "5"])
    assert code == 0
    return root


@pytest.fixture(scope="session")
def exported(export_root) -> str:
    return os.path.join(export_root, "1")


@pytest.fixture(scope="session")
def serving_fn(exported):
    return saved_model.load_saved_model(exported).signatures["serving_default"]


@pytest.fixture(scope="session")
def loaded_run(trained_run) -> LoadedRun:
    return load_run(trained_run)


# --- session fixture: `tfmm demo`'s three runs and its export -----------------------------------

@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """One small ``run_demo`` (1 epoch, 90 training rows): its results, plus ``"output_dir"``
    (data in ``output_dir/data``). Its fused run is a default MiniLM run (frozen MiniLM, VGG16)."""
    from tfmm.demo import run_demo

    root = tmp_path_factory.mktemp("demo_run")
    output_dir = str(root / "demo")
    results = run_demo(output_dir, epochs=1, n_train=90, export_dir=str(root / "saved_models" / "demo"))
    return {**results, "output_dir": output_dir}


# --- parallel runs (pytest-xdist, `-n 2 --dist loadgroup` in setup.cfg) ---------------------------

# Session fixtures that train or export: every test that uses one of a family runs on the same
# worker, so each is made once per suite, not once per worker.
SHARED_FIXTURE_GROUPS = {
    "cli_trained_run": "tiny_run", "trained_run": "tiny_run", "export_root": "tiny_run",
    "exported": "tiny_run", "serving_fn": "tiny_run", "loaded_run": "tiny_run",
    "task_run": "task_runs", "task_export": "task_runs",
    "demo_run": "demo_run",
}


def xdist_group_of(item) -> str:
    """The worker group of a test: its shared session fixture's family, else its module when it
    uses a module-scoped fixture (made once per module), else ``""`` (any worker)."""
    for name in item.fixturenames:
        if name in SHARED_FIXTURE_GROUPS:
            return SHARED_FIXTURE_GROUPS[name]
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(d[-1].scope in ("module", "class", "package") for d in defs.values() if d):
        return item.nodeid.split("::")[0]
    return ""


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the markers to group the tests
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = xdist_group_of(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
