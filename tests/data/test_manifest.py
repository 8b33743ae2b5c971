import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfmm.data.labels import INDEX, MULTI_HOT, ONE_HOT
from tfmm.config import DataConfig
from tfmm.data.images import decode_image
from tfmm.data.manifest import (
    build_label_vocab, check_manifest, load_labels, read_manifest, save_labels,
    validate_manifest,
)
from tfmm.data.pipeline import make_dataset
from tfmm.data.validation import ManifestError


def _png(path, mode="RGB", size=(20, 12), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    color = {"RGB": (200, 10, 10), "L": 128, "RGBA": (10, 200, 10, 128), "P": 3}[mode]
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def _csv(tmp_path, rows, name="m.csv", sep=","):
    df = pd.DataFrame(rows, columns=["image", "text", "label"])
    path = tmp_path / name
    df.to_csv(path, index=False, sep=sep)
    return str(path)


def test_read_manifest_csv_tsv_jsonl_resolve_paths(tmp_path):
    _png(str(tmp_path / "img" / "a.png"))
    rows = [["img/a.png", "a red thing", "x"]]
    for path in (
        _csv(tmp_path, rows),
        _csv(tmp_path, rows, name="m.tsv", sep="\t"),
    ):
        m = read_manifest(path)
        assert m.frame["image"].tolist() == [str(tmp_path / "img" / "a.png")]
        assert m.frame["row"].tolist() == [0]
    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"image": "img/a.png", "text": "t", "label": "x"}) + "\n")
    assert read_manifest(str(jl)).frame["text"].tolist() == ["t"]


def test_read_manifest_custom_columns_and_dataframe(tmp_path):
    _png(str(tmp_path / "a.png"))
    df = pd.DataFrame({"path": ["a.png"], "caption": ["c"], "y": ["k"]})
    cfg = DataConfig(image_col="path", text_col="caption", label_col="y")
    m = read_manifest(df, cfg, root=str(tmp_path))
    assert m.frame["image"][0] == str(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image', 'text', 'label'\]; found \['path', 'caption', 'y'\]"):
        read_manifest(df)
    with pytest.raises(ValueError, match="unsupported extension '.xlsx'"):
        p = tmp_path / "m.xlsx"
        p.write_text("x")
        read_manifest(str(p))


def test_validation_reports_every_problem_with_row_file_and_reason(tmp_path):
    _png(str(tmp_path / "ok.png"))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<html>not found</html>")
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.tiff")
    path = _csv(tmp_path, [
        ["ok.png", "fine", "a"],
        ["missing.png", "fine", "a"],
        ["empty.png", "fine", "b"],
        ["page.jpg", "fine", "b"],
        ["ok.png", "   ", "a"],
        ["pic.tiff", "fine", "a"],
        ["ok.png", "fine", "zebra"],
    ])
    m = read_manifest(path)
    problems = validate_manifest(m, labels=["a", "b"])
    got = {(p.row, p.reason.split(" (")[0].split(";")[0]) for p in problems}
    assert got == {
        (1, "file not found"),
        (2, "empty file"),
        (3, "not an image"),
        (4, "empty text"),
        (5, "unsupported image format TIFF"),
        (6, "unknown label(s) ['zebra']"),
    }
    with pytest.raises(ManifestError) as e:
        check_manifest(m, labels=["a", "b"])
    text = str(e.value)
    assert "6 bad row(s)" in text and f"{path}: row 1: " in text and "--skip-bad-rows" in text


def test_skip_bad_rows_keeps_good_ones_and_writes_them(tmp_path):
    _png(str(tmp_path / "ok.png"))
    path = _csv(tmp_path, [["ok.png", "t", "a"], ["nope.png", "t", "a"], ["ok.png", "", "b"]])
    skipped = str(tmp_path / "skipped.csv")
    m = check_manifest(read_manifest(path), skip_bad_rows=True, skipped_path=skipped)
    assert m.frame["row"].tolist() == [0]
    written = pd.read_csv(skipped)
    assert written["row"].tolist() == [1, 2]
    assert written["reason"].tolist() == ["file not found", "empty text"]


def test_labels_vocab_and_encoding(tmp_path):
    df = pd.DataFrame({"image": ["a", "b", "c"], "text": ["t"] * 3, "label": ["dog", "cat|dog", "bird"]})
    m = read_manifest(df, root=str(tmp_path))
    assert build_label_vocab(m, "one_hot") == ["bird", "cat|dog", "dog"] == build_label_vocab(m)
    vocab = build_label_vocab(m, MULTI_HOT)
    assert vocab == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(
        MULTI_HOT.encode(m.frame, vocab), [[0, 0, 1], [0, 1, 1], [1, 0, 0]]
    )
    np.testing.assert_array_equal(ONE_HOT.class_ids(ONE_HOT.encode(m.frame, ["bird", "cat|dog", "dog"])), [2, 1, 0])
    b = read_manifest(pd.DataFrame({"image": ["a", "b"], "text": ["t", "t"], "label": ["no", "yes"]}))
    np.testing.assert_array_equal(INDEX.encode(b.frame, ["no", "yes"]), [[0.0], [1.0]])
    np.testing.assert_array_equal(INDEX.class_ids(INDEX.encode(b.frame, ["no", "yes"])), [0, 1])
    with pytest.raises(ValueError, match="label encoding must be one of .*received 'multilabel'"):
        build_label_vocab(m, "multilabel")  # a task name is not an encoding
    with pytest.raises(ValueError, match="single-label encoding"):
        MULTI_HOT.class_ids(np.zeros((1, 3)))
    save_labels(vocab, str(tmp_path / "labels.txt"))
    assert load_labels(str(tmp_path / "labels.txt")) == vocab


@pytest.mark.parametrize("mode, fmt, ext", [
    ("RGB", "JPEG", "jpg"), ("L", "PNG", "png"), ("RGBA", "PNG", "png"), ("P", "GIF", "gif"), ("RGB", "BMP", "bmp"),
])
def test_decode_image_formats_to_rgb_eager_and_in_map(tmp_path, mode, fmt, ext):
    path = _png(str(tmp_path / f"x.{ext}"), mode=mode, fmt=fmt)
    raw = tf.io.read_file(path)
    eager = decode_image(raw, 16)
    assert eager.shape == (16, 16, 3) and eager.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(eager)) and float(tf.reduce_max(eager)) <= 255.0
    mapped = next(iter(tf.data.Dataset.from_tensors(raw).map(lambda b: decode_image(b, 16))))
    np.testing.assert_allclose(mapped.numpy(), eager.numpy())
    if mode == "L":  # gray becomes three equal channels
        np.testing.assert_allclose(eager[..., 0], eager[..., 2])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_png_pixels_are_composited_over_white(tmp_path, mode):
    # Left half transparent but storing black (what cut-out stickers hold), right half half-opaque red/grey.
    rgba = np.zeros((4, 8, 4), np.uint8)
    rgba[:, 4:] = (200, 40, 40, 128) if mode == "RGBA" else (90, 90, 90, 128)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":  # a palette with one fully transparent entry (tRNS), the right half opaque
        image = Image.fromarray(np.where(np.arange(8)[None, :] < 4, 0, 1).astype(np.uint8).repeat(4, 0), "P")
        image.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
        image.info["transparency"] = 0
    path = str(tmp_path / "sticker.png")
    image.save(path)
    decoded = decode_image(tf.io.read_file(path), 8).numpy()
    np.testing.assert_allclose(decoded[:, :4], 255.0)  # transparent -> white, not the stored black
    right = {"RGBA": (200 * 128 + 255 * 127) / 255, "LA": (90 * 128 + 255 * 127) / 255, "P": 90.0}[mode]
    np.testing.assert_allclose(decoded[:, 4:, 0], right, atol=0.6)
    reference = np.asarray(Image.alpha_composite(Image.new("RGBA", (8, 4), "white"),
                                                 Image.open(path).convert("RGBA")).convert("RGB"), np.float32)
    reference = tf.image.resize(reference, (8, 8)).numpy()  # decode_image's square output
    np.testing.assert_allclose(decoded, reference, atol=1.0)  # PIL's compositing, which rounds to integers


def test_make_dataset_shapes_targets_and_seeded_shuffle(demo_data, tiny_bert):
    from tfmm.models.text import load_text_preprocessor

    cfg = DataConfig(image_size=32, sequence_length=8)
    m = read_manifest(demo_data["train"])
    labels = build_label_vocab(m)
    pre = load_text_preprocessor(f"keras_nlp:{tiny_bert}", 8)
    ds = make_dataset(m, config=cfg, preprocessor=pre, labels=labels, batch_size=4)
    features, targets = next(iter(ds))
    assert features["image"].shape == (4, 32, 32, 3)
    assert set(features) == {"image", "token_ids", "segment_ids", "padding_mask"}
    assert features["token_ids"].shape == (4, 8) and features["token_ids"].dtype == tf.int32
    assert targets.shape == (4, len(labels))
    np.testing.assert_array_equal(targets.numpy().argmax(1), [labels.index(v) for v in m.frame["label"][:4]])

    def order(seed):
        ds = make_dataset(m, config=cfg, labels=labels, modalities="image", batch_size=len(m),
                                 shuffle=True, seed=seed)
        return next(iter(ds))[1].numpy().argmax(1)

    np.testing.assert_array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))
    image_only = next(iter(make_dataset(m, config=cfg, modalities="image", batch_size=2)))
    assert set(image_only) == {"image"}
    with pytest.raises(ValueError, match="needs a text preprocessor"):
        make_dataset(m, config=cfg, modalities="text")
