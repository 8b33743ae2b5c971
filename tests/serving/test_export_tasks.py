"""Every task exports: matching, multilabel and contrastive signatures pass the export checks
(on the session's run of each task, tests/task_runs.py)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfmm.serving import saved_model


def _png(rgb):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("task, outputs", [
    ("matching", {"match_score", "match"}),
    ("contrastive", {"similarity", "image_embedding", "text_embedding"}),
])
def test_pair_tasks_export_and_pass_checks(task_export, task, outputs):
    result = task_export(task)  # the session's run of this task, exported with the checks
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
def test_multilabel_export_outputs_predicted(task_export):
    result = task_export("multilabel")  # labels "red|circle": colour and shape
    assert result.report.ok, str(result.report)
    out = saved_model.load_saved_model(result.path).signatures["serving_default"](
        image_bytes=tf.constant([_png((90, 90, 90))]), text=tf.constant(["a red one"]))
    assert set(out) == {"scores", "labels", "predicted"}
    assert out["scores"].shape == (1, 6) and out["predicted"].dtype == tf.bool
    assert sorted(x.decode() for x in out["labels"].numpy()[0]) == ["blue", "circle", "green", "red", "square", "triangle"]
