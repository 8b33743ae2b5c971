"""Calibration: temperature scaling, ECE, Brier and the reliability diagram, by hand and on
the session's tiny runs (calibration.json after training; evaluate, predict and the export
serve the temperature-scaled scores)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfmm
from tfmm.evaluation import calibration as cal
from tfmm.run_dir import CALIBRATION_FILE, RELIABILITY_FILE, load_run
from tfmm.tasks import get_task

# Six softmax rows (3 classes) and six sigmoid rows, with confidences away from the bin edges.
SOFTMAX_P = np.array([[0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.5, 0.3, 0.2],
                      [0.25, 0.55, 0.2], [0.35, 0.33, 0.32], [0.1, 0.2, 0.7]])
SOFTMAX_Y = np.array([0, 1, 0, 2, 0, 2])
SIGMOID_P = np.array([0.9, 0.15, 0.65, 0.35, 0.55, 0.05])
SIGMOID_Y = np.array([1, 0, 0, 1, 1, 0])


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ece_and_brier_by_hand():
    # 5 bins (0.2 wide). Softmax confidences .9 .85 | .7 | .5 .55 | .35, correct 1 0 | 1 | 1 0 | 1:
    # (2 * |0.5 - 0.875| + |1 - 0.7| + 2 * |0.5 - 0.525| + |1 - 0.35|) / 6
    assert cal.expected_calibration_error(SOFTMAX_P, SOFTMAX_Y, n_bins=5) == pytest.approx(1.75 / 6)
    # Brier: mean over rows of the squared distance to the one-hot target, summed over classes.
    rows = [0.01 + 0.0025 + 0.0025, 0.7225 + 0.81 + 0.0025, 0.25 + 0.09 + 0.04,
            0.0625 + 0.3025 + 0.64, 0.4225 + 0.1089 + 0.1024, 0.01 + 0.04 + 0.09]
    assert cal.brier_score(SOFTMAX_P, SOFTMAX_Y) == pytest.approx(sum(rows) / 6)
    assert cal.brier_score(SOFTMAX_P, np.eye(3)[SOFTMAX_Y]) == pytest.approx(sum(rows) / 6)  # one-hot too
    # Sigmoid: top-label confidence max(p, 1 - p): .9 .85 .95 right | .65 .65 wrong | .55 right.
    assert cal.expected_calibration_error(SIGMOID_P, SIGMOID_Y, n_bins=5) == pytest.approx(
        (3 * 0.1 + 2 * 0.65 + 0.45) / 6)
    assert cal.expected_calibration_error(SIGMOID_P[:, None], SIGMOID_Y[:, None], n_bins=5) == pytest.approx(2.05 / 6)
    assert cal.brier_score(SIGMOID_P, SIGMOID_Y) == pytest.approx(
        (0.1 ** 2 + 0.15 ** 2 + 0.65 ** 2 + 0.65 ** 2 + 0.45 ** 2 + 0.05 ** 2) / 6)
    assert cal.negative_log_likelihood(SIGMOID_P, SIGMOID_Y) == pytest.approx(
        -np.mean(np.log([0.9, 0.85, 0.35, 0.35, 0.55, 0.95])))
    # The reliability diagram: (mean confidence, accuracy) of each non-empty bin.
    confidence, accuracy = cal.reliability_curve(SIGMOID_P, SIGMOID_Y, n_bins=5)
    np.testing.assert_allclose(confidence, [0.55, 0.65, 0.9])
    np.testing.assert_allclose(accuracy, [1.0, 0.0, 1.0])


def test_temperature_softens_over_confident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(3000, 4)) * 1.5
    y = np.array([rng.choice(4, p=row) for row in _softmax(true_logits)])
    logits = 3.0 * true_logits  # the model is three times too sure
    temperature = cal.fit_temperature(logits, y)
    assert 2.6 < temperature < 3.4
    before, after = _softmax(logits), _softmax(logits / temperature)
    ece_before, ece_after = cal.expected_calibration_error(before, y), cal.expected_calibration_error(after, y)
    assert ece_before > 0.15 and ece_after < 0.04 and ece_after < ece_before / 4
    assert cal.negative_log_likelihood(after, y) < cal.negative_log_likelihood(before, y)
    assert cal.brier_score(after, y) < cal.brier_score(before, y)
    # From the probabilities alone (the logits up to a constant per row), the same temperature.
    assert cal.fit_temperature(cal.logits_from_probabilities(before, "softmax"), y) == pytest.approx(
        temperature, rel=1e-3)
    # Sigmoid: over-confident logits of a binary model.
    z = rng.normal(size=3000) * 2.0
    yb = (rng.random(3000) < 1 / (1 + np.exp(-z))).astype(int)
    t_binary = cal.fit_temperature(4.0 * z, yb)
    assert 3.4 < t_binary < 4.6
    p_before = cal.probabilities_from_logits(4.0 * z, "sigmoid")
    p_after = cal.scale_probabilities(p_before, t_binary, "sigmoid")
    assert cal.expected_calibration_error(p_after, yb) < cal.expected_calibration_error(p_before, yb) / 3
    # An under-confident model is sharpened (T < 1).
    assert cal.fit_temperature(true_logits / 2.0, y) < 0.7


def test_scaling_in_numpy_and_in_the_graph_agree():
    p = _softmax(np.random.default_rng(1).normal(size=(5, 3)) * 4).astype("float32")
    np.testing.assert_allclose(cal.scale_probabilities(p, 2.0, "softmax"), _softmax(np.log(p) / 2.0), rtol=1e-5)
    np.testing.assert_allclose(cal.scale_probabilities_tf(tf.constant(p), 2.0, "softmax"),
                               cal.scale_probabilities(p, 2.0, "softmax"), atol=1e-6)
    s = np.array([[0.01], [0.5], [0.97]], "float32")
    want = 1 / (1 + np.exp(-np.log(s / (1 - s)) / 1.7))
    np.testing.assert_allclose(cal.scale_probabilities(s, 1.7, "sigmoid"), want, rtol=1e-5)
    np.testing.assert_allclose(cal.scale_probabilities_tf(tf.constant(s), 1.7, "sigmoid"), want, rtol=1e-5)
    assert cal.scale_probabilities(p, 1.0, "softmax") is p  # T = 1: the scores as they are
    assert cal.scale_probabilities_tf(tf.constant(s), 1.0, "sigmoid").numpy().tolist() == s.tolist()
    with pytest.raises(ValueError, match=r"activation must be one of \['softmax', 'sigmoid'\]; received 'relu'"):
        cal.scale_probabilities(p, 2.0, "relu")
    with pytest.raises(ValueError, match=r"softmax scores \(6, 3\) need integer targets \[N\] in \[0, 3\)"):
        cal.expected_calibration_error(SOFTMAX_P, [0, 1, 2, 3, 0, 1])
    with pytest.raises(ValueError, match=r"sigmoid scores \[N\] need 0/1 targets \[N\]"):
        cal.brier_score(SIGMOID_P, [0, 1])
    with pytest.raises(ValueError, match=r"finite logits"):
        cal.fit_temperature(np.array([np.nan, 1.0]), [0, 1])


def test_tasks_fit_calibrate_then_tune_and_skip_multilabel(tmp_path, caplog):
    """after_fit on a stand-in model: one predict pass, calibration.json, then thresholds tuned
    on the calibrated scores; --no-calibrate and multilabel write no calibration."""
    from tfmm.tasks.thresholds import load_thresholds, tune_thresholds

    rng = np.random.default_rng(4)
    z = rng.normal(size=64) * 2
    y = (rng.random(64) < 1 / (1 + np.exp(-z))).astype(int)[:, None]
    scores = cal.probabilities_from_logits(5.0 * z, "sigmoid")[:, None]

    class Model:
        calls = 0

        def __call__(self, features, training=False):
            assert training is False and features == {"rows": slice(0, 64)}
            Model.calls += 1
            return tf.constant(scores[features["rows"]])

    val_ds = [({"rows": slice(0, 64)}, y)]  # one (features, targets) batch
    run_dir = tmp_path / "matching"
    run_dir.mkdir()
    get_task("matching").after_fit(Model(), val_ds, y, str(run_dir), ["0", "1"])
    saved = json.load(open(run_dir / CALIBRATION_FILE))
    assert Model.calls == 1 and saved["activation"] == "sigmoid" and saved["n_rows"] == 64
    assert saved["temperature"] > 2 and saved["after"]["nll"] < saved["before"]["nll"]
    calibrated = cal.scale_probabilities(scores, saved["temperature"], "sigmoid")
    np.testing.assert_allclose(load_thresholds(str(run_dir), ["1"]), tune_thresholds(y, calibrated))

    off = tmp_path / "off"
    off.mkdir()
    (off / CALIBRATION_FILE).write_text("{}")  # from an earlier fit: removed
    get_task("binary").after_fit(Model(), val_ds, y, str(off), ["no", "yes"], calibrate=False)  # --no-calibrate
    assert not (off / CALIBRATION_FILE).exists() and Model.calls == 1  # nothing to do: no predict

    multi = tmp_path / "multilabel"
    multi.mkdir()
    with caplog.at_level("INFO", logger="tfmm.tasks.base"):
        get_task("multilabel").after_fit(Model(), val_ds, y, str(multi), ["a"])
    assert not (multi / CALIBRATION_FILE).exists() and (multi / "thresholds.json").exists()
    assert "task 'multilabel': scores are not calibrated" in caplog.text


# --- the session's tiny runs ---------------------------------------------------------------------

def _assert_calibrated_run(run, val, report, activation):
    """calibration.json, evaluate's keys and files, and predict's scores = act(logits / T)."""
    saved = json.load(open(os.path.join(run.run_dir, CALIBRATION_FILE)))
    assert saved["activation"] == activation and saved["n_rows"] >= 8 and saved["temperature"] > 0
    assert saved["after"]["nll"] <= saved["before"]["nll"] + 1e-12
    temperature = run.temperature
    assert temperature == saved["temperature"] and temperature != 1.0

    metrics = tfmm.evaluate(run, val, report_dir=report)
    written = json.load(open(os.path.join(report, "metrics.json")))
    for key in ("ece", "brier", "ece_uncalibrated", "brier_uncalibrated", "temperature"):
        assert written[key] == metrics[key]
    assert metrics["temperature"] == temperature and 0 <= metrics["ece"] <= 1
    assert metrics["ece"] != metrics["ece_uncalibrated"] and metrics["brier"] != metrics["brier_uncalibrated"]
    assert os.path.getsize(os.path.join(report, RELIABILITY_FILE)) > 5000
    assert "calibration: ECE" in get_task(run.config.model.task).summary(metrics)

    raw = run.predict_scores(tfmm.read_manifest(val, run.config.data))
    if activation == "softmax":
        want = _softmax(np.log(np.clip(raw, 1e-7, 1)) / temperature)
    else:
        p = np.clip(raw[:, 0].astype("float64"), 1e-7, 1 - 1e-7)
        s = 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))
        want = np.stack([1 - s, s], axis=1)
    y = get_task(run.config.model.task).class_ids(tfmm.read_manifest(val, run.config.data), run.labels)
    # float32 scores: equal to about 1e-7
    assert metrics["ece"] == pytest.approx(cal.expected_calibration_error(want, y), abs=1e-6)
    assert metrics["ece_uncalibrated"] == pytest.approx(cal.expected_calibration_error(
        raw if activation == "softmax" else raw[:, 0], y), abs=1e-6)
    records = tfmm.predict(run, val, k=len(run.labels))
    for record, row in zip(records, want):
        got = dict(zip(record["labels"], record["scores"]))
        np.testing.assert_allclose([got[label] for label in run.labels], row, atol=1e-6)
    assert not np.allclose(want, raw if activation == "softmax" else np.concatenate([1 - raw, raw], 1), atol=1e-4)
    return records


def _served(export_path, val, n):
    from tfmm.serving import saved_model

    frame = tfmm.read_manifest(val).frame.head(n)
    fn = saved_model.load_saved_model(export_path).signatures["serving_default"]
    out = fn(image_bytes=tf.constant([open(p, "rb").read() for p in frame["image"]]),
             text=tf.constant(frame["text"].tolist()))
    return out["scores"].numpy(), [[b.decode() for b in row] for row in out["labels"].numpy()]


@pytest.mark.slow
@pytest.mark.parametrize("name,activation", [("classification", "softmax"), ("binary", "sigmoid")])
def test_task_runs_serve_calibrated_scores(name, activation, task_run, task_data, task_export, tmp_path):
    val = task_data(name)["val"]
    records = _assert_calibrated_run(load_run(task_run(name).run_dir), val, str(tmp_path / "report"), activation)
    # The exported signature divides the logits by T too: its scores are predict's.
    scores, labels = _served(task_export(name).path, val, 3)
    for record, row, names in zip(records, scores, labels):
        got = dict(zip(record["labels"], record["scores"]))
        np.testing.assert_allclose(row, [got[label] for label in names], atol=1e-5)


@pytest.mark.slow
def test_trained_run_is_calibrated_and_logs_the_diagram(loaded_run, demo_data, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    _assert_calibrated_run(loaded_run, demo_data["val"], str(tmp_path / "report"), "softmax")
    events = event_accumulator.EventAccumulator(os.path.join(loaded_run.run_dir, "logs", "eval"),
                                                size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    assert "reliability_diagram" in events.Tags()["tensors"]
    image = events.Tensors("reliability_diagram")[-1].tensor_proto
    assert len(image.string_val[2]) > 5000  # [width, height, PNG bytes]


def test_tasks_apply_the_runs_temperature_and_leave_uncalibrated_runs_as_they_were(tmp_path):
    """Evaluation, serving outputs of a stand-in run with and without a temperature."""
    import types

    import pandas as pd

    from tfmm.config import RunConfig
    from tfmm.data.manifest import Manifest

    p = SOFTMAX_P.astype("float32")
    frame = pd.DataFrame({"row": range(6), "image": [f"/x/{i}.png" for i in range(6)], "text": ["t"] * 6,
                          "label": np.array(["a", "b", "c"])[SOFTMAX_Y]})
    manifest = Manifest(frame, "test.csv", "/x")

    def fake_run(calibration):
        return types.SimpleNamespace(
            run_dir=str(tmp_path), labels=["a", "b", "c"], config=RunConfig(), calibration=calibration,
            temperature=calibration["temperature"] if calibration else 1.0,
            model=lambda features, training=False: tf.constant(p))

    task = get_task("classification")
    plain = task.evaluate_scores(fake_run(None), manifest, p)
    assert "ece" not in plain.metrics and plain.curves == {}  # as before calibration existed
    assert "calibration" not in task.summary(plain.metrics)
    np.testing.assert_array_equal(task.serving_outputs(fake_run(None))({})["scores"], p)

    run = fake_run({"temperature": 0.5, "activation": "softmax"})
    sharper = _softmax(np.log(SOFTMAX_P) / 0.5)
    m = task.evaluate_scores(run, manifest, p).metrics
    assert m["temperature"] == 0.5 and m["accuracy"] == plain.metrics["accuracy"]  # argmax unchanged
    assert m["ece_uncalibrated"] == pytest.approx(cal.expected_calibration_error(SOFTMAX_P, SOFTMAX_Y))
    assert m["ece"] == pytest.approx(cal.expected_calibration_error(sharper, SOFTMAX_Y), abs=1e-6)
    assert m["brier"] == pytest.approx(cal.brier_score(sharper, SOFTMAX_Y), abs=1e-6)
    assert "calibration: ECE" in task.summary(m) and "temperature 0.5000" in task.summary(m)
    np.testing.assert_allclose(task.serving_outputs(run)({})["scores"], sharper, atol=1e-6)
