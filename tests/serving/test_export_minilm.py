"""A default export of a MiniLM run loads and answers in a process that imports only TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import yaml

from tfmm import cli

# Real text in several scripts and languages (with accents, CJK, RTL, emoji, odd spacing).
MULTILINGUAL = [
    "Ein roter Kreis auf grauem Grund", "un carré vert, très net", "círculo azul en la foto",
    "красный квадрат на картинке", "青い三角形の写真です", "빨간 원이 있는 사진", "صورة مربع أخضر",
    "תמונה של משולש כחול", "एक लाल वृत्त", "ένα πράσινο τετράγωνο 🙂", "  spaced\tout  text ", "Straße ÉCOLE naïve",
]

CHILD = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    job = json.load(open(sys.argv[1]))
    fn = tf.saved_model.load(job["path"]).signatures["serving_default"]
    images = [open(p, "rb").read() for p in job["images"]]
    out = fn(image_bytes=tf.constant(images), text=tf.constant(job["texts"]))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow_text", "tfmm", "keras_hub", "tensorflow_hub"))
    json.dump({"scores": out["scores"].numpy().tolist(),
               "labels": [[l.decode() for l in row] for row in out["labels"].numpy().tolist()],
               "modules": loaded}, open(sys.argv[2], "w"))
""")


@pytest.mark.slow
def test_default_minilm_export_serves_in_a_tensorflow_only_process(demo_run, tmp_path, capsys):
    # The run: the demo's fused model (conftest.demo_run, shared with the `tfmm demo` test), a
    # default MiniLM run: frozen MiniLM text encoder, VGG16 at 32x32, trained for one epoch.
    data_dir = os.path.join(demo_run["output_dir"], "data")
    test = pd.read_csv(os.path.join(data_dir, "test.csv")).head(len(MULTILINGUAL))
    test["text"] = MULTILINGUAL[: len(test)]
    test.to_csv(os.path.join(data_dir, "multilingual.csv"), index=False)
    run = demo_run["run_dirs"]["fused"]
    with open(os.path.join(run, "config.yaml")) as f:
        model_config = yaml.safe_load(f)["model"]
    assert (model_config["text_encoder"], model_config["freeze_text"]) == ("minilm", True)
    root = str(tmp_path / "export")
    assert cli.main(["export", "--model", run, "--export-dir", root]) == 0  # no flags
    printed = capsys.readouterr().out
    assert "core only" in printed and "validation manifest" in printed
    version = os.path.join(root, "1")
    assert os.path.isfile(os.path.join(version, "assets.extra", "tf_serving_warmup_requests"))

    manifest = os.path.join(data_dir, "multilingual.csv")
    assert cli.main(["predict", "--model", run, "--data", manifest, "--top-k", "9",
                     "--output", str(tmp_path / "pred.jsonl")]) == 0
    predicted = [json.loads(line) for line in open(tmp_path / "pred.jsonl", encoding="utf-8")]

    job = {"path": version, "images": [os.path.join(data_dir, p) for p in test["image"]],
           "texts": test["text"].tolist()}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "job.json"), str(tmp_path / "out.json")],
                   check=True, cwd=str(tmp_path), env=env, capture_output=True, text=True)
    served = json.loads((tmp_path / "out.json").read_text())
    assert served["modules"] == []  # neither tensorflow_text nor keras_hub / tensorflow_hub / tfmm
    assert len(served["scores"]) == len(predicted) == len(test)
    for row, record in zip(range(len(test)), predicted):
        by_label = dict(zip(served["labels"][row], served["scores"][row]))
        for label, score in zip(record["labels"], record["scores"]):
            assert abs(by_label[label] - score) <= 1e-5, (row, label, by_label[label], score)
