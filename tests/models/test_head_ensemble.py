"""The ensemble head (tfmm.models.head_ensemble) and the feature dropout of the dense heads."""

import keras
import numpy as np
import pytest

from tfmm.config import RunConfig
from tfmm.models import head_ensemble
from tfmm.tasks import get_task
from tfmm.training import stages

DIMS = {"image_features": 6, "text_features": 4}


def _config(**model):
    return RunConfig().replace(model={"num_classes": 3, "projection_dim": 8, "hidden_dim": 8, **model})


def _features(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, d)).astype("float32") for k, d in DIMS.items()}


def _head(config):
    task = get_task(config.model.task)
    if (config.model.head_ensemble or 1) > 1:
        return head_ensemble.build_head_ensemble(config, DIMS, task.build_head)
    return task.build_head(config, DIMS)


@pytest.mark.parametrize("task", ["classification", "binary", "multilabel", "matching"])
def test_ensemble_scores_are_the_mean_of_its_members(task):
    keras.utils.set_random_seed(0)
    head = _head(_config(task=task, head_ensemble=3, num_classes=2 if task != "classification" else 3))
    members = head_ensemble.members(head)
    assert [m.name for m in members] == ["member_1", "member_2", "member_3"] and head.name == "fusion_head"
    x = _features()
    each = np.stack([keras.ops.convert_to_numpy(m(x)) for m in members])
    out = keras.ops.convert_to_numpy(head(x))
    assert out.shape == each.shape[1:]
    np.testing.assert_allclose(out, each.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(each[0], each[1])  # each member has its own initialisation
    restored = keras.Model.from_config(head.get_config())  # serializable like any head
    restored.set_weights(head.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), out, rtol=1e-5, atol=1e-6)


def test_ensemble_is_refused_where_scores_cannot_be_averaged():
    task = get_task("contrastive")
    with pytest.raises(ValueError, match="head_ensemble=2 averages .* received task 'contrastive'"):
        head_ensemble.build_head_ensemble(_config(task="contrastive", head_ensemble=2), DIMS, task.build_head)
    with pytest.raises(ValueError, match="received encoder 'clip:x'"):
        head_ensemble.build_head_ensemble(_config(encoder="clip:x", head_ensemble=2), DIMS,
                                          get_task("classification").build_head)


def test_feature_dropout_drops_features_in_training_only():
    keras.utils.set_random_seed(0)
    head = _head(_config(feature_dropout=0.5, dropout=0.0))
    rates = {layer.name: layer.rate for layer in head.layers if layer.name.endswith("feature_dropout")}
    assert rates == {"image_feature_dropout": 0.5, "text_feature_dropout": 0.5}
    x = _features(n=64)
    inference = [keras.ops.convert_to_numpy(head(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = keras.ops.convert_to_numpy(head(x, training=True))
    assert not np.allclose(training, inference[0])
    plain = _head(_config(feature_dropout=0.0))
    assert not any(layer.name.endswith("feature_dropout") for layer in plain.layers)


def test_copy_weights_fills_each_member_from_its_own_stage1_model():
    keras.utils.set_random_seed(1)

    def model_of(config):
        inputs = {k: keras.Input((d,), name=k) for k, d in DIMS.items()}
        return keras.Model(inputs, _head(config)(inputs))

    singles = [model_of(_config()) for _ in range(3)]
    target = model_of(_config(head_ensemble=3))
    assert stages.copy_weights(singles, target) == ["fusion_head"]
    members = head_ensemble.members(target.get_layer("fusion_head"))
    for member, single in zip(members, singles):
        for a, b in zip(member.get_weights(), single.get_layer("fusion_head").get_weights()):
            np.testing.assert_array_equal(a, b)
    x = _features()
    expected = np.mean([keras.ops.convert_to_numpy(s(x)) for s in singles], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(target(x)), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="has 3 members; received 2 single-head models"):
        stages.copy_weights(singles[:2], target)
