"""Decision thresholds: tuned for F1, saved, loaded, and absent for tasks without them."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from tfmm.tasks import get_task
from tfmm.tasks.thresholds import load_thresholds, save_thresholds, tune_and_save, tune_thresholds


def test_tuned_thresholds_maximize_f1_and_are_saved(tmp_path):
    rng = np.random.default_rng(2)
    y = (rng.random((150, 3)) < 0.4).astype(int)
    scores = np.clip(0.35 * y + 0.65 * rng.random((150, 3)), 0, 1)
    y[:, 2] = 0  # no positives: keeps 0.5
    thresholds = tune_thresholds(y, scores)
    for c in range(2):
        best = max(skm.f1_score(y[:, c], scores[:, c] >= t) for t in np.unique(scores[:, c]))
        assert skm.f1_score(y[:, c], scores[:, c] >= thresholds[c]) == pytest.approx(best)
        assert thresholds[c] not in scores[:, c]  # halfway between two scores
    assert thresholds[2] == 0.5
    np.testing.assert_allclose(tune_thresholds(np.array([[0], [1], [1]]), np.array([[0.2], [0.3], [0.9]])), [0.25])
    save_thresholds(str(tmp_path), ["x", "y", "z"], thresholds, tuned_on="validation data")
    np.testing.assert_allclose(load_thresholds(str(tmp_path), ["x", "y", "z"]), thresholds)
    # Without validation data the thresholds stay 0.5, and the file says so.
    assert list(tune_and_save(None, None, str(tmp_path), ["1"])) == [0.5]
    assert json.load(open(tmp_path / "thresholds.json"))["tuned_on"] is None
    # Given validation scores, the saved thresholds are those tuned on them.
    np.testing.assert_allclose(tune_and_save(scores, y, str(tmp_path), ["x", "y", "z"]), thresholds)
    assert json.load(open(tmp_path / "thresholds.json"))["tuned_on"] == "validation data"
    # Tasks without thresholds write none after fit.
    (tmp_path / "plain").mkdir()
    get_task("classification").after_fit(None, None, None, str(tmp_path / "plain"), ["a", "b"])
    assert not (tmp_path / "plain" / "thresholds.json").exists()
    assert get_task("classification").tune_thresholds(y, scores) is None
    save_thresholds(str(tmp_path), ["x", "y", "z"], thresholds, tuned_on="validation data")
    with pytest.raises(ValueError, match=r"thresholds are for labels \['x', 'y', 'z'\]"):
        load_thresholds(str(tmp_path), ["x", "y"])
    np.testing.assert_allclose(load_thresholds(str(tmp_path / "none"), ["a", "b"]), [0.5, 0.5])
