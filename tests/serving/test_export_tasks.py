"""Every task exports: matching, multilabel and contrastive signatures pass the export checks."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.test_tasks_cli import _args, colour_pairs  # noqa: F401  (fixture)
from tfmm.cli import main
from tfmm.serving import saved_model
from tfmm.serving.export import export_for_serving


def _png(rgb):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("task, extra, outputs", [
    ("matching", ["--negatives", "1"], {"match_score", "match"}),
    ("contrastive", [], {"similarity", "image_embedding", "text_embedding"}),
])
def test_pair_tasks_export_and_pass_checks(colour_pairs, tiny_bert, tmp_path, task, extra, outputs):  # noqa: F811
    run = str(tmp_path / task)
    assert main(["train", "--data", colour_pairs["train"], "--val-data", colour_pairs["val"], "--output-dir", run,
                 "--task", task, *extra, *_args(tiny_bert)]) == 0
    result = export_for_serving(run, str(tmp_path / "export"), warmup_data=colour_pairs["val"], warmup_records=3)
    assert result.report.ok, str(result.report)
    loaded = saved_model.load_saved_model(result.path)
    fn = loaded.signatures["serving_default"]
    out = fn(image_bytes=tf.constant([_png((220, 30, 30)), _png((30, 40, 220))]),
             text=tf.constant(["a red one", "a red one"]))
    assert set(out) == outputs
    if task == "contrastive":
        image_vec = loaded.signatures["embed_image"](image_bytes=tf.constant([_png((220, 30, 30))]))["embedding"]
        text_vec = loaded.signatures["embed_text"](text=tf.constant(["a red one", "painted blue"]))["embedding"]
        np.testing.assert_allclose(np.linalg.norm(image_vec.numpy(), axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(text_vec.numpy(), axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(out["similarity"].numpy()[0], float(image_vec.numpy()[0] @ text_vec.numpy()[0]), atol=1e-5)
    else:
        assert out["match_score"].shape == (2,) and out["match"].dtype == tf.bool


@pytest.mark.slow
def test_multilabel_export_outputs_predicted(demo_data, tiny_config, tmp_path):
    import pandas as pd

    import tfmm

    df = pd.read_csv(demo_data["train"])
    df["label"] = [lab.replace(" ", "|") for lab in df["label"]]  # "red|circle": colour and shape
    path = demo_data["train"].replace("train.csv", "train_ml.csv")
    df.to_csv(path, index=False)
    cfg = tiny_config.replace(model={"task": "multilabel", "freeze_image": True, "freeze_text": True})
    run = tfmm.train(cfg, path, None, str(tmp_path / "ml"), verbose=0).run_dir
    result = export_for_serving(run, str(tmp_path / "export"))
    assert result.report.ok, str(result.report)
    out = saved_model.load_saved_model(result.path).signatures["serving_default"](
        image_bytes=tf.constant([_png((90, 90, 90))]), text=tf.constant(["a red one"]))
    assert set(out) == {"scores", "labels", "predicted"}
    assert out["scores"].shape == (1, 6) and out["predicted"].dtype == tf.bool
    assert sorted(x.decode() for x in out["labels"].numpy()[0]) == ["blue", "circle", "green", "red", "square", "triangle"]
