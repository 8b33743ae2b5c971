"""CLIP and SigLIP dual encoders (``--encoder clip:DIR`` / ``siglip:DIR``) on tiny presets saved here.

Each family gets two module-scoped runs through `tfmm train`: classification on the two tower
embeddings (one step: the batch is the 24 training rows) and contrastive fine-tuning with the
model's own loss (two epochs of that one batch, so the history's two losses are the loss
before and after one update). Each run evaluates, predicts and exports; zero-shot runs on the
untrained presets and is checked against numpy on the KerasHub backbone's own embeddings.
"""

import contextlib
import io
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.hub_helper import make_tiny_clip_preset, make_tiny_siglip_preset
from tfmm.cli import main
from tfmm.data.manifest import read_manifest
from tfmm.evaluation.evaluate import evaluate, predict
from tfmm.models import dual_encoder_heads, dual_encoders
from tfmm.models.text import build_text_encoder
from tfmm.run_dir import load_run
from tfmm.serving import saved_model
from tfmm.serving.export import export_for_serving
from tfmm.tasks import dual_encoder, get_task
from tfmm.tasks.zero_shot import load_encoder_run, zero_shot_predict

SEQ = 16
LABELS = ["red circle", "green square", "blue triangle"]
MAKERS = {"clip": make_tiny_clip_preset, "siglip": make_tiny_siglip_preset}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual_encoder_presets")
    return {family: f"{family}:{make(str(root / family))}" for family, make in MAKERS.items()}


@pytest.fixture(scope="module")
def preprocessors(presets):
    """One text preprocessor per family (tracing a tokenizer graph takes seconds: shared)."""
    return {family: dual_encoders.text_preprocessor(spec, SEQ) for family, spec in presets.items()}


def _train(spec, data, run_dir, task, epochs):
    # --text-encoder repeats the spec: the text preprocessor follows it (see the module docstring of text.py).
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--data", data["train"], "--val-data", data["val"], "--output-dir", run_dir,
                     "--encoder", spec, "--text-encoder", spec, "--task", task, "--image-size", "32",
                     "--sequence-length", str(SEQ), "--projection-dim", "8", "--hidden-dim", "0",
                     "--epochs", str(epochs), "--batch-size", "24", "--learning-rate", "1e-2",
                     "--encoder-lr-scale", "1.0", "--no-calibrate"])
    assert code == 0, printed.getvalue()
    return load_run(run_dir)


@pytest.fixture(scope="module")
def runs(presets, task_data, tmp_path_factory):
    """``{(family, task): {"run", "history", "export", "data"}}``, made on first use."""
    cache = {}

    def get(family, task):
        if (family, task) not in cache:
            root = tmp_path_factory.mktemp(f"{family}_{task}")
            data = task_data(task)
            run = _train(presets[family], data, str(root / "run"), task, epochs=2 if task == "contrastive" else 1)
            with open(os.path.join(run.run_dir, "history.json")) as f:
                history = json.load(f)
            # The fresh-process export check runs for the contrastive exports (both tokenizer graphs).
            export = export_for_serving(run, str(root / "export"), warmup_data=data["val"], warmup_records=2,
                                        check_rows=4, check=task == "contrastive")
            cache[family, task] = {"run": run, "history": history, "export": export, "data": data}
        return cache[family, task]

    return get


def _images(manifest_path, n=None):
    frame = read_manifest(manifest_path, require_labels=False).frame.head(n)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), "float32") for p in frame["image"]])
    encoded = [open(p, "rb").read() for p in frame["image"]]
    return pixels, encoded, frame


def _unit(x):
    x = np.asarray(x, "float64")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- the model's own pieces --------------------------------------------------------------------

@pytest.mark.slow
def test_towers_are_the_backbones_embeddings(presets, preprocessors):
    """The image tower (converter in the graph) and text tower give KerasHub's own embeddings."""
    for family, spec in presets.items():
        parsed = dual_encoders.parse_encoder_spec(spec)
        backbone = dual_encoders.load_backbone(parsed)
        converter = dual_encoders.load_image_converter(parsed)
        image_tower = dual_encoders.build_image_tower(backbone, converter, 32)
        text_tower = dual_encoders.build_text_tower(backbone, family, SEQ)
        pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
        tokens = preprocessors[family](tf.constant(["a red circle", "blue", ""]))
        expected = backbone({"images": converter(pixels), "token_ids": tokens["token_ids"]})
        # The backbone's head: logits = exp(scale) * cosine (+ bias), texts x images.
        cosine = _unit(text_tower(tokens)) @ _unit(image_tower(pixels)).T
        scale, bias = dual_encoders.logit_parameters(backbone)
        np.testing.assert_allclose(math.exp(scale) * cosine + (bias or 0.0),
                                   keras.ops.convert_to_numpy(expected["text_logits"]), atol=1e-4)
        assert image_tower.output_shape == text_tower.output_shape == (None, 16)
        # `--text-encoder clip:DIR` alone: the same text tower beside another image encoder.
        alone = build_text_encoder(spec, sequence_length=SEQ)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(alone(tokens)),
                                   keras.ops.convert_to_numpy(text_tower(tokens)), atol=1e-6)


def test_text_preprocessor_packs_as_the_family_does(preprocessors):
    clip = preprocessors["clip"]
    packed = clip(tf.constant(["A Red CIRCLE"]))
    ids, mask = packed["token_ids"].numpy()[0], packed["padding_mask"].numpy()[0]
    tokenizer = clip.tokenizer
    n = int(mask.sum())
    # <|startoftext|> ids <|endoftext|>, pad 0; the end token is the largest id: CLIP pools it by argmax.
    assert ids[0] == tokenizer.start_token_id and ids[n - 1] == tokenizer.end_token_id
    assert int(np.argmax(ids)) == n - 1 and (ids[n:] == 0).all()
    assert np.array_equal(ids, clip(tf.constant(["a red circle"]))["token_ids"].numpy()[0])  # lower-cased

    siglip = preprocessors["siglip"]
    packed = siglip(tf.constant(["A photo, of the RED circle!"]))
    ids, end = packed["token_ids"].numpy()[0], siglip.tokenizer.end_token_id
    assert ids[-1] == end and ids[int(packed["padding_mask"].numpy()[0].sum()) - 1] == end  # padded with </s>
    plain = siglip(tf.constant(["a photo of the red circle"]))["token_ids"].numpy()[0]
    np.testing.assert_array_equal(ids, plain)  # SigLIP's canonicalization: case, punctuation

    # Eagerly and inside tf.data alike (the graph path, also for digits and non-ASCII).
    texts = ["Grüße 123, a blue square", "photo 42"]
    for pre in (clip, siglip):
        mapped = next(iter(tf.data.Dataset.from_tensor_slices(texts).batch(2).map(pre)))
        np.testing.assert_array_equal(mapped["token_ids"].numpy(), pre(tf.constant(texts))["token_ids"].numpy())


def test_clip_vocabulary_without_the_end_token_last_is_refused():
    import keras_hub

    from tfmm.models.dual_encoder_text import DualEncoderTextPreprocessor

    vocabulary = {"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3, "<|startoftext|>": 4}
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=["a b"])
    with pytest.raises(ValueError, match=r"largest token id.*<\|endoftext\|> is id 3, its largest id is 4"):
        DualEncoderTextPreprocessor(tokenizer, SEQ, "clip")


def test_spec_errors_name_the_way_out(tmp_path, presets):
    with pytest.raises(ValueError, match=r"encoder must be 'clip:PRESET_OR_DIR' or 'siglip:PRESET_OR_DIR'.*'vit:x'"):
        dual_encoders.parse_encoder_spec("vit:x")
    with pytest.raises(ValueError, match=r"could not load the backbone of clip KerasHub preset 'no_such_preset'"
                                         r"(.|\n)*pass a local folder instead \('clip:/path/to/preset'"):
        dual_encoders.load_backbone(dual_encoders.parse_encoder_spec("clip:no_such_preset"))
    siglip_folder = presets["siglip"].split(":", 1)[1]
    with pytest.raises(ValueError, match=r"holds a SigLIPBackbone, not a CLIPBackbone"):
        dual_encoders.load_backbone(dual_encoders.parse_encoder_spec(f"clip:{siglip_folder}"))
    backbone = dual_encoders.load_backbone(dual_encoders.parse_encoder_spec(presets["siglip"]))
    with pytest.raises(ValueError, match=r"sequence_length must be exactly 16 \(its text tower reads the last position\) "
                                         r"for this siglip encoder; received 8: pass --sequence-length 16"):
        dual_encoders.build_text_tower(backbone, "siglip", 8)


def test_sigmoid_loss_is_siglip_loss_and_similarity_roundtrips(tmp_path):
    from keras_hub.src.models.siglip.siglip_loss import SigLIPLoss

    logits = np.random.default_rng(1).normal(size=(5, 5)).astype("float32") * 4
    ids = np.stack([np.arange(5), np.arange(5)], 1).astype("float32")
    signs = 2 * np.eye(5, dtype="float32") - 1
    expected = float(SigLIPLoss()(signs, logits))
    assert float(dual_encoder_heads.SigmoidContrastiveLoss()(ids, logits)) == pytest.approx(expected, rel=1e-5)

    layer = dual_encoder_heads.SigmoidSimilarity(temperature=0.1, bias=-3.0)
    a = np.eye(3, dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([a, a])), 10 * np.eye(3) - 3, rtol=1e-5)
    restored = dual_encoder_heads.SigmoidSimilarity.from_config(layer.get_config())
    assert restored.initial_bias == -3.0 and restored.temperature == pytest.approx(0.1)
    i, t = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([i, t], dual_encoder_heads.SigmoidSimilarity(0.5, bias=1.0)([i, t]))
    model.save(str(tmp_path / "sim.keras"))
    b = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.models.load_model(str(tmp_path / "sim.keras"))([b, b])),
                               keras.ops.convert_to_numpy(model([b, b])), rtol=1e-5)


def test_pretrained_contrastive_head_keeps_the_towers_space():
    """No standardization or projection: the towers' embeddings are only L2-normalized, so
    the head's own towers (used on cached features) are the identity up to the norm."""
    features = {"image_features": 6, "text_features": 6}
    with pytest.raises(ValueError, match=r"embeddings of different widths"):
        dual_encoder_heads.build_pretrained_contrastive_head({"image_features": 6, "text_features": 4}, "clip")
    for family, similarity in (("clip", "ContrastiveSimilarity"), ("siglip", "SigmoidSimilarity")):
        head = dual_encoder_heads.build_pretrained_contrastive_head(features, family)
        assert type(head.get_layer("similarity")).__name__ == similarity
        x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
        tower = dual_encoder.image_embedding_model(head)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(tower(x)), _unit(x), atol=1e-5)
        assert (dual_encoder.logit_bias(head) is None) == (family == "clip")
    assert type(dual_encoder_heads.contrastive_loss("siglip")).__name__ == "SigmoidContrastiveLoss"
    assert type(dual_encoder_heads.contrastive_loss("clip")).__name__ == "ContrastiveLoss"


# --- zero-shot on the untrained presets ---------------------------------------------------------

def _reference_zero_shot(spec, preprocessor, manifest_path, prompts):
    """Label scores from the KerasHub backbone itself: numpy cosine, the model's scale and bias."""
    parsed = dual_encoders.parse_encoder_spec(spec)
    backbone = dual_encoders.load_backbone(parsed)
    converter = dual_encoders.load_image_converter(parsed)
    pixels, _, _ = _images(manifest_path)
    image = _unit(backbone.get_vision_embeddings(converter(pixels)))
    tokens = preprocessor(tf.constant(prompts))["token_ids"]
    text = _unit(backbone.get_text_embeddings(tokens))
    cosine = image @ text.T
    scale, bias = dual_encoders.logit_parameters(backbone)
    logits = math.exp(scale) * cosine
    if bias is not None:
        return cosine, 1 / (1 + np.exp(-(logits + bias)))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return cosine, probs / probs.sum(1, keepdims=True)


@pytest.mark.slow
def test_zero_shot_on_a_preset_returns_the_most_similar_prompt(presets, preprocessors, demo_data, tmp_path):
    prompts = [f"a photo of a {label}" for label in LABELS]
    for family, spec in presets.items():
        cosine, expected = _reference_zero_shot(spec, preprocessors[family], demo_data["test"], prompts)
        if family == "clip":  # through the command line, as a user would
            out = str(tmp_path / "zero_shot.jsonl")
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["predict", "--model", spec, "--data", demo_data["test"], "--zero-shot-labels",
                             ",".join(LABELS), "--prompt", "a photo of a {}", "--output", out]) == 0
            with open(out) as f:
                records = [json.loads(line) for line in f]
        else:
            records = zero_shot_predict(spec, demo_data["test"], LABELS, prompt="a photo of a {}", k=3)
        assert len(records) == len(cosine)
        for record, row_cosine, row_scores in zip(records, cosine, expected):
            best = int(np.argmax(row_cosine))
            assert record["labels"][0] == LABELS[best] and record["prompts"][0] == prompts[best]
            np.testing.assert_allclose(record["scores"], np.sort(row_scores)[::-1], atol=1e-4)
        if family == "siglip":  # sigmoid scores: one probability per label, not a distribution
            assert not np.allclose(expected.sum(1), 1.0)


def test_encoder_run_of_a_preset_uses_the_towers_sizes(presets):
    run = load_encoder_run(presets["siglip"])
    assert (run.config.data.image_size, run.config.data.sequence_length) == (32, SEQ)
    assert run.config.model.task == "contrastive" and run.labels == []
    assert dual_encoder.logit_bias(run.model) == pytest.approx(0.0)  # the preset's own (untrained) bias


# --- training runs ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(MAKERS))
def test_classification_on_the_two_embeddings(family, runs, presets):
    import keras_hub

    result = runs(family, "classification")
    run, data = result["run"], result["data"]
    assert type(run.preprocessor).__name__ == "DualEncoderTextPreprocessor"
    assert run.model.get_layer("image_encoder").output_shape == (None, 16)
    assert run.model.get_layer("text_encoder").output_shape == (None, 16)
    # One step moved the towers away from the preset's weights.
    initial = keras_hub.models.Backbone.from_preset(presets[family].split(":", 1)[1])
    trained = {w.path: keras.ops.convert_to_numpy(w) for w in run.model.get_layer("image_encoder").weights}
    start = {w.path: keras.ops.convert_to_numpy(w) for w in initial.vision_encoder.weights}
    shared = [p for p in trained if p in start]
    assert shared and any(not np.allclose(trained[p], start[p]) for p in shared)

    n_val = len(read_manifest(data["val"]))
    metrics = evaluate(run, data["val"])
    assert metrics["n_examples"] == n_val and 0.0 <= metrics["accuracy"] <= 1.0
    predictions = predict(run, data["val"])
    assert len(predictions) == n_val and set(predictions[0]["labels"]) <= set(run.labels)
    # The export (checked in-process here) scores as the model does on raw bytes and strings.
    _, encoded, frame = _images(data["val"], 4)
    fn = saved_model.load_saved_model(result["export"].path).signatures["serving_default"]
    served = fn(image_bytes=tf.constant(encoded), text=tf.constant(frame["text"].tolist()))["scores"].numpy()
    expected = run.predict_scores(read_manifest(data["val"]))[:4]
    np.testing.assert_allclose(served, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(MAKERS))
def test_contrastive_fine_tuning_with_the_models_own_loss(family, runs):
    result = runs(family, "contrastive")
    run, history, data = result["run"], result["history"], result["data"]
    expected_loss = "SigmoidContrastiveLoss" if family == "siglip" else "ContrastiveLoss"
    assert type(get_task("contrastive").loss(run.config)).__name__ == expected_loss
    similarity = run.model.get_layer("fusion_head").get_layer("similarity")
    assert type(similarity).__name__ == ("SigmoidSimilarity" if family == "siglip" else "ContrastiveSimilarity")
    losses = [row["loss"] for row in history] if isinstance(history, list) else history["loss"]
    assert len(losses) == 2 and losses[1] < losses[0], losses

    metrics = evaluate(run, data["val"])
    assert metrics["n_examples"] == len(read_manifest(data["val"], require_labels=False))
    assert 0.0 <= metrics["image_to_text_recall@1"] <= 1.0
    rows = predict(run, data["val"])
    zero = predict(run, data["val"], zero_shot_labels=LABELS)
    assert len(rows) == len(zero) and set(zero[0]["labels"]) == set(LABELS)

    export = result["export"]
    assert export.report is not None and export.report.ok, str(export.report)
    # The tokenizer graph keeps its TF Text ops: the verdict names them and the oldest server.
    serving = export.report.serving
    assert not serving["core_ops_only"] and serving["oldest_tf_serving"] == "2.12", serving
    assert ("SentencepieceOp" if family == "siglip" else "RegexSplitWithOffsets") in serving["non_core_ops"]
    # embed_image / embed_text equal the run's own towers on the same images and texts.
    pixels, encoded, frame = _images(data["val"], 4)
    texts = frame["text"].tolist()
    loaded = saved_model.load_saved_model(export.path)
    served_image = loaded.signatures["embed_image"](image_bytes=tf.constant(encoded))["embedding"].numpy()
    served_text = loaded.signatures["embed_text"](text=tf.constant(texts))["embedding"].numpy()
    image_emb = dual_encoder.image_embedding_model(run.model).predict(pixels, verbose=0)
    text_emb = dual_encoder.text_embedding_model(run.model)(run.preprocessor(tf.constant(texts)))
    np.testing.assert_allclose(served_image, image_emb, atol=1e-4)
    np.testing.assert_allclose(served_text, keras.ops.convert_to_numpy(text_emb), atol=1e-4)
