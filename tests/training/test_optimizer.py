"""tfmm.training.optimizer: the learning-rate rule, default epochs, and encoders at
learning_rate x encoder_lr_scale (one step, a checkpoint round trip, MirroredStrategy)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmm.config import RunConfig, TrainConfig
from tfmm.training import feature_cache, optimizer
from tfmm.training.optimizer import EncoderScaledAdamW, make_optimizer, resolve_train_defaults


def _two_part_model():
    """``image`` -> ``image_encoder`` (Dense 3) -> ``fusion_head`` (Dense 2): one encoder, one head."""
    x = keras.Input((4,), name="image")
    enc_in = keras.Input((4,))
    encoder = keras.Model(enc_in, keras.layers.Dense(3, name="enc_dense")(enc_in), name="image_encoder")
    head_in = keras.Input((3,))
    head = keras.Model(head_in, keras.layers.Dense(2, name="head_dense")(head_in), name="fusion_head")
    return keras.Model(x, head(encoder(x)))


def _config(**train):
    return RunConfig().replace(train={"learning_rate": 1e-2, "epochs": 1, "warmup_fraction": 0.0,
                                      "weight_decay": 0.0, "encoder_lr_scale": 0.1, **train})


def _first_step_moves(model, opt):
    """How far one Adam step with unit gradients moves each variable (Adam's first step: ~lr)."""
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    opt.apply([tf.ones_like(v) for v in variables], variables)
    return {v.path: float(np.abs(v.numpy() - b).mean()) for v, b in zip(variables, before)}


def test_encoder_variables_move_by_scale_times_the_head():
    model = _two_part_model()
    moves = _first_step_moves(model, make_optimizer(_config(), steps_per_epoch=10, model=model))
    assert moves["head_dense/kernel"] == pytest.approx(1e-2, rel=1e-3)
    assert moves["head_dense/bias"] == pytest.approx(1e-2, rel=1e-3)
    assert moves["enc_dense/kernel"] == pytest.approx(1e-3, rel=1e-3)  # 0.1 x the head's step
    assert moves["enc_dense/bias"] == pytest.approx(1e-3, rel=1e-3)
    # Without a model nothing is scaled: every variable moves by the learning rate.
    other = _two_part_model()
    assert set(np.round(list(_first_step_moves(other, make_optimizer(_config(), 10)).values()), 6)) == {1e-2}


@pytest.mark.slow
def test_scaling_holds_under_mirrored_strategy_and_after_a_checkpoint(tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])  # mirrored variables, one device
    with strategy.scope():
        model = _two_part_model()
        opt = make_optimizer(_config(), steps_per_epoch=10, model=model)
        model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((4, 4), "float32"), np.full((4, 2), 100.0, "float32")  # gradients of one sign
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    moves = {v.path: float(np.abs(v.numpy() - b).mean()) for v, b in zip(model.trainable_variables, before)}
    assert moves["head_dense/kernel"] == pytest.approx(1e-2, rel=1e-2)
    assert moves["enc_dense/kernel"] == pytest.approx(1e-3, rel=1e-2)
    # A saved model keeps the optimizer's class, its scale and its state.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, EncoderScaledAdamW)
    assert loaded.optimizer.encoder_lr_scale == 0.1 and int(loaded.optimizer.iterations) == 1


def test_learning_rate_and_epochs_defaults():
    assert (TrainConfig().learning_rate, TrainConfig().epochs) == (None, None)
    both = RunConfig().replace(model={"freeze_image": True, "freeze_text": True})
    assert resolve_train_defaults(both).train.learning_rate == optimizer.HEAD_LEARNING_RATE == 1e-3
    assert resolve_train_defaults(RunConfig()).train.learning_rate == optimizer.FINE_TUNE_LEARNING_RATE == 1e-4
    one = RunConfig().replace(model={"freeze_image": True})
    assert resolve_train_defaults(one).train.learning_rate == 1e-4  # the text encoder is fine-tuned
    text_only = one.replace(model={"modalities": "text", "freeze_text": True, "freeze_image": False})
    assert resolve_train_defaults(text_only).train.learning_rate == 1e-3  # the only used encoder is frozen
    assert resolve_train_defaults(both.replace(train={"learning_rate": 5e-3})).train.learning_rate == 5e-3
    assert resolve_train_defaults(both).train.epochs == 10
    assert resolve_train_defaults(both, head_only_cached=True).train.epochs == optimizer.HEAD_EPOCHS == 50
    assert resolve_train_defaults(both.replace(train={"epochs": 3}), head_only_cached=True).train.epochs == 3
    assert resolve_train_defaults(both).train.encoder_lr_scale == optimizer.ENCODER_LR_SCALE == 0.1
    assert resolve_train_defaults(both.replace(train={"encoder_lr_scale": 0.3})).train.encoder_lr_scale == 0.3
    assert feature_cache.head_only_cached(both) and not feature_cache.head_only_cached(one)
    assert not feature_cache.head_only_cached(both.replace(train={"cache_features": False}))
    with pytest.raises(ValueError, match="learning_rate must be > 0; received 0"):
        TrainConfig(learning_rate=0)
    from tfmm.cli_parser import build_parser, config_from_args

    parse = build_parser().parse_args
    tc = config_from_args(parse(["train", "--data", "d", "--output-dir", "r"])).train
    assert (tc.learning_rate, tc.epochs, tc.encoder_lr_scale) == (None, None, None)  # the preset's, else 0.1
    tc = config_from_args(parse(["train", "--data", "d", "--output-dir", "r", "--learning-rate", "3e-3",
                                 "--epochs", "7", "--encoder-lr-scale", "0.5"])).train
    assert (tc.learning_rate, tc.epochs, tc.encoder_lr_scale) == (3e-3, 7, 0.5)

