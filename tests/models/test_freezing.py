"""Partial fine-tuning: only the top N blocks train; the rest is frozen and in inference mode."""

import keras
import numpy as np
import pytest

from tests.conftest import WORDS
from tfmm.config import RunConfig
from tfmm.models import freezing, vision
from tfmm.tasks import build_model


@pytest.fixture(scope="module")
def two_layer_bert(tmp_path_factory):
    """A tiny KerasHub BERT with two transformer layers and dropout 0.1."""
    import keras_hub

    folder = str(tmp_path_factory.mktemp("bert2"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=16,
                                  intermediate_dim=32, max_sequence_length=16).save_to_preset(folder)
    keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True).save_to_preset(folder)
    return folder


def _weights_by_layer(model):
    """{(encoder, layer): [arrays]} for every weight-holding layer of the two encoders' backbones."""
    out = {}
    for encoder in ("image_encoder", "text_encoder"):
        backbone = next(l for l in model.get_layer(encoder).layers if isinstance(l, keras.Model))
        for layer in backbone.layers:
            if layer.weights:
                out[(encoder, layer.name)] = [w.numpy().copy() for w in layer.weights]
    return out


@pytest.mark.slow
def test_only_the_top_blocks_change_in_a_fit_step(two_layer_bert):
    cfg = RunConfig().replace(
        data={"image_size": 32, "sequence_length": 8},
        model={"text_encoder": f"keras_nlp:{two_layer_bert}", "text_pooling": "cls",
               "image_encoder": "efficientnet_lite0", "image_weights": "none", "projection_dim": 8,
               "hidden_dim": 0, "dropout": 0.0, "num_classes": 2,
               "unfreeze_image_blocks": 1, "unfreeze_text_layers": 1},
    )
    model = build_model(cfg)
    text_backbone = next(l for l in model.get_layer("text_encoder").layers if isinstance(l, keras.Model))
    # The frozen layer's dropout is off; the trained one's is on.
    assert {l.rate for l in text_backbone.get_layer("transformer_layer_0")._flatten_layers()
            if isinstance(l, keras.layers.Dropout)} == {0.0}
    assert 0.1 in {l.rate for l in text_backbone.get_layer("transformer_layer_1")._flatten_layers()
                   if isinstance(l, keras.layers.Dropout)}
    before = _weights_by_layer(model)
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32"),
         "token_ids": rng.integers(5, 20, (4, 8)).astype("int32"),
         "segment_ids": np.zeros((4, 8), "int32"), "padding_mask": np.ones((4, 8), "int32")}
    # Adam: a step of about the learning rate whatever the gradient scale (random weights without
    # trained BatchNorm statistics give tiny gradients that an SGD step would not move).
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1, 0, 1]), epochs=1, batch_size=4, verbose=0)
    after = _weights_by_layer(model)
    changed = {key for key in before if any(not np.array_equal(a, b) for a, b in zip(before[key], after[key]))}
    image_top = {("image_encoder", n) for n in ("block7a_expand_conv", "block7a_dwconv", "block7a_project_conv",
                                                 "top_conv")}
    text_top = {("text_encoder", "transformer_layer_1"), ("text_encoder", "pooled_dense")}
    # Everything below the top block, BatchNorm moving statistics included, stays as it was; the
    # top block's BatchNorm layers keep theirs too (and their scale/offset): only its convolutions train.
    assert changed == image_top | text_top, sorted(changed ^ (image_top | text_top))
    norms = {l.name: l.trainable for l in model.get_layer("image_encoder")._flatten_layers()
             if isinstance(l, keras.layers.BatchNormalization)}
    assert [norms[n] for n in ("block7a_expand_bn", "block7a_bn", "block7a_project_bn", "top_bn")] == [False] * 4


def test_blocks_of_encoders_and_too_many_blocks(tiny_bert):
    lite = vision.build_image_encoder("efficientnet_lite0", weights="none", image_size=32)
    blocks, below = freezing.encoder_blocks(lite)
    assert [name for name, _ in blocks] == [f"block{i}" for i in range(1, 8)]
    assert [layer.name for layer in below] == ["image", "image_normalization", "stem_conv", "stem_bn", "stem_activation"]
    assert blocks[-1][1][-1].name == "avg_pool"  # the head belongs to the top block
    with pytest.raises(ValueError, match=r"unfreeze_image_blocks must be between 1 and the number of blocks "
                                         r"of 'image_encoder', 7 \(\['block1', .*received 8"):
        freezing.unfreeze_top_blocks(lite, 8, flag="unfreeze_image_blocks")
    vgg = vision.build_image_encoder("vgg16", weights="none", image_size=32)
    assert freezing.unfreeze_top_blocks(vgg, 2) == ["block4", "block5"]
    assert {w.path.split("/")[0] for w in vgg.trainable_weights} == {"block4_conv1", "block4_conv2", "block4_conv3",
                                                                     "block5_conv1", "block5_conv2", "block5_conv3"}
    cfg = RunConfig().replace(data={"image_size": 32, "sequence_length": 8},
                              model={"text_encoder": f"keras_nlp:{tiny_bert}", "modalities": "text",
                                     "num_classes": 2, "unfreeze_text_layers": 2})
    with pytest.raises(ValueError, match=r"unfreeze_text_layers .* 1 \(\['transformer_layer_0'\]\); received 2"):
        build_model(cfg)
    with pytest.raises(ValueError, match="freeze_text=True and unfreeze_text_layers=1 contradict"):
        build_model(cfg.replace(model={"unfreeze_text_layers": 1, "freeze_text": True}))
