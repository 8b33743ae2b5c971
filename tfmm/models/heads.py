"""The dense fusion head: per-branch [feature dropout] -> projection -> fusion -> dropout ->
[hidden] -> scores.

Tasks with one score per class (``tfmm.tasks``: classification, binary, multilabel) build
their ``fusion_head`` with :func:`build_dense_head`, choosing the output width and activation.
"""

from __future__ import annotations

import keras

from tfmm.models.fusion import Fusion


def head_layers(units: int, activation: str, *, hidden_dim: int, dropout: float) -> list:
    """Dropout -> [hidden Dense] -> output Dense, in order.

    The output layer (``scores``) is kept in float32 so mixed precision stays numerically safe.
    """
    layers = [keras.layers.Dropout(dropout, name="fusion_dropout")]
    if hidden_dim:
        layers += [
            keras.layers.Dense(hidden_dim, activation="relu", name="head_hidden"),
            keras.layers.Dropout(dropout, name="head_dropout"),
        ]
    layers.append(keras.layers.Dense(units, activation=activation, dtype="float32", name="scores"))
    return layers


def feature_dropout(x, model_config, feature_name: str):
    """``x`` through a ``Dropout(model_config.feature_dropout)`` named ``<branch>_feature_dropout``
    (training only), or ``x`` itself when the rate is 0 / unset."""
    rate = model_config.feature_dropout or 0.0
    if not rate:
        return x
    return keras.layers.Dropout(rate, name=feature_name.replace("features", "feature_dropout"))(x)


def build_dense_head(config, feature_dims: dict, *, units: int, activation: str) -> keras.Model:
    """The ``fusion_head`` model over per-modality feature vectors.

    Args:
        config: the run config (its ``model`` section: ``feature_dropout``, ``projection_dim``,
            ``fusion``, ``hidden_dim``, ``dropout``).
        feature_dims: ``{"image_features": D_i, "text_features": D_t}`` for the modalities used.
        units: output width.
        activation: output activation (``softmax``, ``sigmoid``).

    Returns:
        A ``keras.Model`` named ``fusion_head`` from that dict of ``[B, D]`` features to
        ``[B, units]`` scores, with layers ``*_projection``, ``fusion`` and ``scores``.
    """
    mc = config.model
    inputs = {
        name: keras.Input(shape=(dim,), dtype="float32", name=name)
        for name, dim in feature_dims.items()
    }
    projected = [
        keras.layers.Dense(mc.projection_dim, activation="relu", name=name.replace("features", "projection"))(
            feature_dropout(x, mc, name))
        for name, x in inputs.items()
    ]
    x = Fusion(mc.fusion, name="fusion")(projected)
    for layer in head_layers(units, activation, hidden_dim=mc.hidden_dim, dropout=mc.dropout):
        x = layer(x)
    return keras.Model(inputs, x, name="fusion_head")
