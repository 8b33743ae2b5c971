"""Bad input, row by row: every kind is reported with its row and exact reason."""

import json
import os

import pandas as pd
import pytest
from PIL import Image

from tfmm.cli import main
from tfmm.config import DataConfig
from tfmm.data.manifest import check_manifest, read_manifest, validate_manifest


def _img(path, size=(16, 16), fmt="PNG", mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, 100).save(path, format=fmt)
    return path


def _reasons(problems):
    return {p.row: p.reason for p in problems}


@pytest.fixture
def corpus(tmp_path):
    """A folder with one image of each bad kind and a manifest naming them all."""
    d = tmp_path / "data"
    _img(str(d / "ok.png"))
    _img(str(d / "big.png"), size=(300, 200))
    (d / "zero.jpg").write_bytes(b"")
    (d / "html.jpg").write_text("<html><body>404</body></html>")
    good_jpeg = _img(str(d / "full.jpg"), size=(64, 64), fmt="JPEG")
    data = open(good_jpeg, "rb").read()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    _img(str(d / "pic.webp"), fmt="WEBP")
    _img(str(tmp_path / "outside.png"))
    os.symlink(str(tmp_path / "outside.png"), str(d / "link.png"))
    locked = _img(str(d / "locked.png"))
    os.chmod(locked, 0)
    rows = [
        ("ok.png", "fine", "a"),          # 0 ok
        ("missing.png", "fine", "a"),     # 1
        ("zero.jpg", "fine", "a"),        # 2
        ("html.jpg", "fine", "a"),        # 3
        ("cut.jpg", "fine", "a"),         # 4
        ("pic.webp", "fine", "a"),        # 5
        ("big.png", "fine", "a"),         # 6
        ("ok.png", "", "a"),              # 7
        ("../outside.png", "fine", "a"),  # 8
        ("link.png", "fine", "a"),        # 9
        ("ok.png", "fine", "zebra"),      # 10
        ("ok.png", "fine", "a"),          # 11 duplicate of 0
        ("locked.png", "fine", "b"),      # 12
    ]
    pd.DataFrame(rows, columns=["image", "text", "label"]).to_csv(d / "m.csv", index=False)
    return str(d / "m.csv")


def test_every_bad_kind_reported_with_row_and_reason(corpus):
    config = DataConfig(max_image_pixels=50_000)
    m = read_manifest(corpus, config)
    got = _reasons(validate_manifest(m, labels=["a", "b"], config=config))
    assert 0 not in got
    assert got[1] == "file not found"
    assert got[2] == "empty file (0 bytes)"
    assert got[3].startswith("not an image (supported: JPEG, PNG, GIF, BMP)")
    assert got[4].startswith("truncated or corrupt image")
    assert got[5].startswith("unsupported image format WEBP; supported: JPEG, PNG, GIF, BMP (convert it")
    assert got[6].startswith("image is 300x200 = 60000 pixels, over the limit of 50000")
    assert got[7] == "empty text"
    assert "outside the manifest folder" in got[8] and "--allow-outside-root" in got[8]
    assert "outside the manifest folder" in got[9]
    assert got[10].startswith("unknown label(s) ['zebra']")
    assert got[11] == "duplicate of row 0"
    if os.geteuid() != 0:  # root reads any file
        assert got[12] == "unreadable file (permission denied)"
    allowed = DataConfig(max_image_pixels=50_000, allow_outside_root=True)
    again = _reasons(validate_manifest(read_manifest(corpus, allowed), config=allowed))
    assert 8 not in again and 9 not in again


def test_malformed_and_non_utf8_lines(tmp_path):
    _img(str(tmp_path / "ok.png"))
    raw = (b"image,text,label\n"
           b"ok.png,first,a\n"
           b"ok.png,too,many,fields\n"
           b"ok.png,caf\xe9 latin-1,a\n"
           b"\n"
           b"ok.png,\"quoted, with comma\",b\n")
    (tmp_path / "m.csv").write_bytes(raw)
    m = read_manifest(str(tmp_path / "m.csv"))
    assert m.frame["row"].tolist() == [0, 3]
    assert m.frame["text"].tolist() == ["first", "quoted, with comma"]
    got = _reasons(validate_manifest(m))
    assert got[1] == "line 3: malformed, expected 3 fields (image, text, label); found 4 (quote fields that contain the separator)"
    assert got[2].startswith("line 4 is not valid UTF-8 (byte 0xe9 at column 11)")

    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"image": "ok.png", "text": "t", "label": "a"}) + "\n{not json\n[1, 2]\n")
    got = _reasons(validate_manifest(read_manifest(str(jl))))
    assert got[1].startswith("line 2: malformed JSON")
    assert got[2] == "line 3: expected a JSON object; received list"


def test_skip_bad_rows_writes_every_reason(corpus, tmp_path):
    skipped = str(tmp_path / "skipped.csv")
    m = check_manifest(read_manifest(corpus), labels=["a", "b"], skip_bad_rows=True,
                              skipped_path=skipped)
    assert m.frame["row"].tolist() == [0, 6] + ([12] if os.geteuid() == 0 else [])
    written = pd.read_csv(skipped)
    assert set(written["row"]) >= {1, 2, 3, 4, 5, 7, 8, 9, 10, 11}


def test_validate_command_exit_codes(corpus, demo_data, capsys):
    assert main(["validate", "--data", demo_data["train"]]) == 0
    assert "72 of 72 row(s) usable, 0 bad" in capsys.readouterr().out
    assert main(["validate", "--data", corpus, "--max-image-pixels", "50000"]) == 1
    out = capsys.readouterr().out
    assert f"{corpus}: row 1: " in out and "file not found" in out
    assert "bad (" in out


def _bomb(fmt: str) -> bytes:
    """Small bytes whose header claims a 100000 x 100000 image."""
    import io
    import struct
    import zlib

    if fmt == "PNG":
        ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64)
    if fmt == "GIF":
        return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0" * 64
    if fmt == "BMP":
        return b"BM" + b"\0" * 16 + struct.pack("<ii", 100000, -100000) + b"\0" * 64
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    return bytes(raw)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG"])
def test_bomb_headers_rejected_before_decoding(fmt):
    import tensorflow as tf

    from tfmm.data.images import decode_image, image_header_size

    raw = tf.constant(_bomb(fmt))
    height, width = (int(v) for v in image_header_size(raw))
    assert height * width >= 60000 * 60000
    with pytest.raises(tf.errors.InvalidArgumentError, match="more pixels than the limit of 1000000"):
        decode_image(raw, 32, max_pixels=1_000_000, name=tf.constant("request 3"))
    ds = tf.data.Dataset.from_tensors(raw).map(lambda b: decode_image(b, 32, max_pixels=1_000_000))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        next(iter(ds))


def test_header_size_of_real_images_and_other_bytes(tmp_path):
    import tensorflow as tf

    from tfmm.data.images import image_header_size

    for fmt, mode in (("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("JPEG", "L")):
        path = _img(str(tmp_path / f"x.{fmt.lower()}"), size=(37, 23), fmt=fmt, mode=mode)
        assert [int(v) for v in image_header_size(tf.io.read_file(path))] == [23, 37]
    assert [int(v) for v in image_header_size(tf.constant(b"<html>"))] == [-1, -1]
    assert [int(v) for v in image_header_size(tf.constant(b""))] == [-1, -1]
