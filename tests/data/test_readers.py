"""tfmm.data.readers: every source shape reads to the manifest of its equivalent CSV, locally and
on a tf.io.gfile filesystem (TensorFlow's in-memory ram://, standing in for gs://)."""

import io
import json
import logging
import os
import uuid

import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfmm.cli import main
from tfmm.config import DataConfig
from tfmm.data.manifest import read_manifest, validate_manifest, write_manifest
from tfmm.data.readers import detect_format
from tfmm.data.validation import image_problem, outside_root, resolve_path

# (label, stem, caption): sorted by path, as class folders list them.
ROWS = [
    ("circle", "0001", "a red circle"),
    ("circle", "0002", "a blue circle"),
    ("circle", "0003", "a green circle"),
    ("square", "0004", "a red square"),
    ("square", "0005", "a blue square"),
    ("square", "0006", "a green square"),
]
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def _join(*parts):
    return "/".join(p.rstrip("/") for p in parts)


def _put(path, data: bytes):
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def _png(caption: str, shape: str) -> bytes:
    img = Image.new("RGB", (32, 32), (240, 240, 240))
    colour = COLOURS[caption.split()[1]]
    for x in range(6, 26):
        for y in range(6, 26):
            if shape == "square" or (x - 16) ** 2 + (y - 16) ** 2 <= 100:
                img.putpixel((x, y), colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_shapes(folder: str, rows=ROWS) -> dict:
    """The same examples in every shape, in ``folder`` (local or ram://): class folders with
    ``<stem>.txt`` captions, and beside them an imagefolder ``metadata.jsonl``, a CSV, a
    Parquet file and COCO captions, all naming the same images. Returns ``{shape: path}``."""
    records = []
    for label, stem, caption in rows:
        _put(_join(folder, label, f"{stem}.png"), _png(caption, label))
        _put(_join(folder, label, f"{stem}.txt"), (caption + "\n").encode())
        records.append({"image": f"{label}/{stem}.png", "text": caption, "label": label})
    frame = pd.DataFrame(records)
    paths = {shape: _join(folder, name) for shape, name in (
        ("csv", "manifest.csv"), ("parquet", "manifest.parquet"), ("coco", "captions.json"),
        ("imagefolder", "metadata.jsonl"))}
    _put(paths["csv"], frame.to_csv(index=False).encode())
    buf = io.BytesIO()
    frame.to_parquet(buf)
    _put(paths["parquet"], buf.getvalue())
    meta = frame.rename(columns={"image": "file_name"})
    _put(paths["imagefolder"], meta.to_json(orient="records", lines=True).encode())
    coco = {"images": [{"id": i, "file_name": r["image"]} for i, r in enumerate(records)],
            "annotations": [{"id": 100 + i, "image_id": i, "caption": r["text"]} for i, r in enumerate(records)]}
    _put(paths["coco"], json.dumps(coco).encode())
    paths["class_folders"] = folder
    return paths


@pytest.fixture(params=["local", "ram"])
def shapes(request, tmp_path):
    folder = str(tmp_path / "pets") if request.param == "local" else f"ram://{uuid.uuid4().hex}/pets"
    return write_shapes(folder)


def _columns(m, labels=True):
    return m.frame[["row", "image", "text"] + (["label"] if labels else [])].to_dict("list")


def test_every_shape_reads_to_the_manifest_of_its_csv(shapes):
    csv = read_manifest(shapes["csv"])
    root = shapes["class_folders"]
    assert csv.frame["image"].iloc[0] == (_join(root, "circle", "0001.png") if "://" in root
                                          else os.path.join(root, "circle", "0001.png"))
    assert csv.frame["label"].tolist() == [r[0] for r in ROWS]
    folders = read_manifest(root, DataConfig(data_format="class_folders"))  # metadata.jsonl makes auto imagefolder
    for m in (folders, read_manifest(shapes["parquet"]), read_manifest(root), read_manifest(shapes["imagefolder"])):
        assert _columns(m) == _columns(csv), m.source
        assert m.root == csv.root and validate_manifest(m) == []
    coco = read_manifest(shapes["coco"], require_labels=False)
    assert not coco.has_labels and _columns(coco, labels=False) == _columns(csv, labels=False)
    assert validate_manifest(coco) == []


def test_detect_format_and_data_format_for_ambiguous_sources(shapes, tmp_path):
    root = shapes["class_folders"]
    assert [detect_format(shapes[k]) for k in ("csv", "parquet", "coco", "imagefolder")] == [
        "csv", "parquet", "coco", "imagefolder"]
    assert detect_format(root) == "imagefolder"
    assert detect_format(_join(root, "circle")) == "class_folders"
    jsonl = tmp_path / "rows.json"  # JSON lines under a .json name stay JSON lines
    jsonl.write_text('{"image": "a.png", "text": "t", "label": "x"}\n{"image": "b.png", "text": "u", "label": "y"}\n')
    assert detect_format(str(jsonl)) == "jsonl"
    assert detect_format(str(jsonl), DataConfig(data_format="coco")) == "coco"
    with pytest.raises(ValueError, match=r"--data-format csv reads a file; .*pets is a folder"):
        detect_format(root, DataConfig(data_format="csv"))
    with pytest.raises(ValueError, match="--data-format class_folders reads a folder"):
        detect_format(shapes["csv"], DataConfig(data_format="class_folders"))
    with pytest.raises(FileNotFoundError, match="manifest not found: .*nothing.csv"):
        read_manifest(_join(root, "nothing.csv"))
    with pytest.raises(ValueError, match="COCO captions have no labels; .*--task contrastive"):
        read_manifest(shapes["coco"])


def test_class_folders_depth_filename_text_and_bad_entries(tmp_path):
    root = str(tmp_path / "photos")
    _put(_join(root, "animals", "cats", "grey_cat-1.png"), _png("a red x", "circle"))
    _put(_join(root, "animals", "cats", "grey_cat-1.txt"), b"a grey cat\n\n  on a sofa \n")
    _put(_join(root, "animals", "dogs", "0001.png"), _png("a blue x", "square"))  # no caption file
    _put(_join(root, "loose.png"), _png("a red x", "square"))  # not in a class folder
    _put(_join(root, ".cache", "x.png"), _png("a red x", "square"))  # hidden: skipped
    m = read_manifest(root, DataConfig(label_depth=2))
    assert m.frame[["row", "text", "label"]].values.tolist() == [[0, "a grey cat on a sofa", "animals/cats"]]
    got = [str(p) for p in validate_manifest(m)]
    assert got == [
        f"{root}: row 1: {root}/animals/dogs/0001.png: no caption file 0001.txt (or pass --text-from filename)",
        f"{root}: row 2: {root}/loose.png: not inside a class folder: --label-depth 2 needs LABEL/LABEL/loose.png",
    ]
    names = read_manifest(root, DataConfig(text_from="filename"))
    assert names.frame[["text", "label"]].values.tolist() == [["grey cat 1", "cats"], ["0001", "dogs"]]
    assert [p.row for p in names.problems] == [2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no image file .* expected class folders such as"):
        read_manifest(str(tmp_path / "empty"))


def test_imagefolder_csv_metadata_columns_and_folder_labels(tmp_path):
    root = str(tmp_path / "hf")
    _put(_join(root, "cats", "a.png"), _png("a red x", "circle"))
    _put(_join(root, "dogs", "b.png"), _png("a blue x", "square"))
    _put(_join(root, "metadata.csv"), b"file_name,caption\ncats/a.png,a cat\ndogs/b.png,a dog\n")
    m = read_manifest(root, DataConfig(text_col="caption"))
    assert m.frame[["text", "label"]].values.tolist() == [["a cat", "cats"], ["a dog", "dogs"]]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]; found \['file_name', 'caption', "
                                         r"'_folder_label'\]. An imagefolder"):
        read_manifest(root)


def test_remote_outside_root_names_the_cell_and_where_it_resolves():
    base = f"ram://{uuid.uuid4().hex}"
    _put(_join(base, "data", "in.png"), _png("a red x", "circle"))
    _put(_join(base, "elsewhere", "out.png"), _png("a red x", "circle"))
    _put(_join(base, "data", "m.csv"), f"image,text,label\nin.png,a,x\n../elsewhere/out.png,b,x\n"
                                       f"{base}/elsewhere/out.png,c,x\n/tmp/local.png,d,x\n".encode())
    m = read_manifest(_join(base, "data", "m.csv"))
    got = {p.row: p.reason for p in validate_manifest(m)}
    assert sorted(got) == [1, 2, 3]
    assert got[1].startswith(f"image path '../elsewhere/out.png' resolves to {base}/elsewhere/out.png outside "
                             f"the manifest folder {base}/data")
    assert got[2].startswith(f"image path outside the manifest folder {base}/data")
    allowed = DataConfig(allow_outside_root=True)
    assert {p.row: p.reason for p in validate_manifest(m, config=allowed)} == {3: "file not found"}
    assert resolve_path("a/../b.png", "gs://bkt/d") == "gs://bkt/d/b.png"
    assert outside_root("gs://bkt/data2/x.png", "gs://bkt/data") and not outside_root("gs://bkt/data/x", "gs://bkt/data/")


def test_image_checks_read_through_gfile():
    base = f"ram://{uuid.uuid4().hex}"
    _put(_join(base, "ok.png"), _png("a red x", "circle"))
    _put(_join(base, "empty.png"), b"")
    _put(_join(base, "page.png"), b"<html>404</html>")
    _put(_join(base, "cut.png"), _png("a red x", "circle")[:60])
    assert image_problem(_join(base, "ok.png"), max_pixels=10_000) is None
    assert image_problem(_join(base, "ok.png"), max_pixels=100).startswith("image is 32x32 = 1024 pixels")
    assert image_problem(_join(base, "none.png"), max_pixels=10_000) == "file not found"
    assert image_problem(_join(base, "empty.png"), max_pixels=10_000) == "empty file (0 bytes)"
    assert image_problem(_join(base, "page.png"), max_pixels=10_000).startswith("not an image")
    assert image_problem(_join(base, "cut.png"), max_pixels=10_000).startswith("truncated or corrupt image")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_write_manifest_round_trips(where, tmp_path, caplog):
    folder = str(tmp_path / "pets") if where == "local" else f"ram://{uuid.uuid4().hex}/pets"
    write_shapes(folder)
    source = read_manifest(folder, DataConfig(data_format="class_folders"))
    out = _join(folder.rsplit("/", 1)[0], "pets.csv")  # beside the folder: paths stay relative
    write_manifest(source, out)
    with tf.io.gfile.GFile(out) as f:
        assert f.read().splitlines()[:2] == ["image,text,label", "pets/circle/0001.png,a red circle,circle"]
    back = read_manifest(out)
    assert _columns(back) == _columns(source) and validate_manifest(back) == []
    inside = _join(folder, "circle", "again.csv")  # square/ is not below it: written absolute, with a warning
    with caplog.at_level(logging.WARNING):
        write_manifest(source, inside)
    assert "3 image path(s) are outside its folder" in caplog.text
    again = read_manifest(inside)
    assert again.frame["image"].tolist() == source.frame["image"].tolist()
    assert [p.row for p in validate_manifest(again)] == [3, 4, 5]
    assert validate_manifest(again, config=DataConfig(allow_outside_root=True)) == []


def test_manifest_command_reports_writes_and_skips(tmp_path, capsys):
    folder = str(tmp_path / "pets")
    write_shapes(folder)
    os.remove(os.path.join(folder, "square", "0005.txt"))
    out = str(tmp_path / "pets.csv")
    assert main(["manifest", folder, "--data-format", "class_folders", "--output", out]) == 1
    printed = capsys.readouterr().out
    assert f"{folder}/square/0005.png: no caption file 0005.txt" in printed
    assert "5 of 6 row(s) usable, 1 bad" in printed and f"wrote 5 row(s) to {out}" in printed
    assert pd.read_csv(out)["label"].tolist() == ["circle"] * 3 + ["square"] * 2
    assert main(["manifest", _join(folder, "captions.json"), "--task", "contrastive", "--output", out]) == 0
    assert pd.read_csv(out).columns.tolist() == ["image", "text"] and len(pd.read_csv(out)) == 6
    assert main(["validate", "--data", folder, "--data-format", "class_folders"]) == 1
    assert main(["validate", "--data", _join(folder, "captions.json"), "--task", "contrastive"]) == 0


VAL_ROWS = [("circle", "0101", "a red circle"), ("circle", "0102", "a green circle"),
            ("square", "0103", "a blue square"), ("square", "0104", "a red square")]


def _tiny_args(tiny_bert, *extra):
    from tests.conftest import tiny_train_args

    return tiny_train_args(tiny_bert, *extra[:3], "--freeze-image", "--freeze-text", *extra[3:])


def _metrics(report_dir):
    with open(os.path.join(report_dir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_class_folders_on_ram_train_and_every_shape_evaluates_the_same(tiny_bert, tmp_path, capsys):
    """Trains on class folders in ram:// (images and captions read through tf.io.gfile); the
    validation data in each of the other shapes then scores exactly the same."""
    import dataclasses

    import tfmm
    from tfmm.run_dir import load_run

    base = f"ram://{uuid.uuid4().hex}"
    train, val = write_shapes(_join(base, "train")), write_shapes(_join(base, "val"), VAL_ROWS)
    run_dir = str(tmp_path / "run")
    args = _tiny_args(tiny_bert, train["class_folders"], val["class_folders"], run_dir, "--data-format", "class_folders")
    assert main(args) == 0, capsys.readouterr().err
    with open(os.path.join(run_dir, "labels.txt")) as f:
        assert f.read().split() == ["circle", "square"]
    assert main(["evaluate", "--model", run_dir, "--data", val["csv"], "--data-format", "auto",
                 "--report-dir", str(tmp_path / "csv")]) == 0
    expected = _metrics(str(tmp_path / "csv"))
    assert expected["n_examples"] == 4
    run = load_run(run_dir)
    auto = dataclasses.replace(run, config=run.config.replace(data={"data_format": "auto"}))
    got = tfmm.evaluate(auto, val["imagefolder"], report_dir=str(tmp_path / "imagefolder"))
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["f1_macro"] == pytest.approx(expected["f1_macro"])
    got = tfmm.evaluate(run, val["class_folders"], report_dir=str(tmp_path / "folders"))  # the run's own format
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    preds = str(tmp_path / "preds.jsonl")
    assert main(["predict", "--model", run_dir, "--data", val["parquet"], "--data-format", "parquet",
                 "--output", preds]) == 0
    with open(preds) as f:
        records = [json.loads(line) for line in f]
    assert [r["true_label"] for r in records] == [r[0] for r in VAL_ROWS]


@pytest.mark.slow
def test_coco_on_ram_round_trips_through_tfmm_manifest_and_trains_contrastive(tiny_bert, tmp_path, capsys):
    """COCO captions -> `tfmm manifest` CSV (in ram://) -> a contrastive run; the COCO file and
    the CSV it became evaluate to the same retrieval metrics."""
    base = f"ram://{uuid.uuid4().hex}"
    train, val = write_shapes(_join(base, "train")), write_shapes(_join(base, "val"), VAL_ROWS)
    train_csv = _join(base, "train", "from_coco.csv")
    assert main(["manifest", train["coco"], "--task", "contrastive", "--output", train_csv]) == 0
    assert _columns(read_manifest(train_csv, require_labels=False), labels=False) == \
        _columns(read_manifest(train["coco"], require_labels=False), labels=False)
    run_dir = str(tmp_path / "run")
    assert main(_tiny_args(tiny_bert, train_csv, val["coco"], run_dir, "--task", "contrastive")) == 0, \
        capsys.readouterr().err
    for name, data in (("coco", val["coco"]), ("csv", val["csv"])):
        assert main(["evaluate", "--model", run_dir, "--data", data, "--report-dir", str(tmp_path / name)]) == 0
    coco, csv = _metrics(str(tmp_path / "coco")), _metrics(str(tmp_path / "csv"))
    assert coco["n_examples"] == csv["n_examples"] == 4
    assert {k: v for k, v in coco.items() if "recall" in k} == pytest.approx(
        {k: v for k, v in csv.items() if "recall" in k})


def test_prepare_reads_class_folders_on_ram_and_writes_there(capsys):
    from tfmm.data.manifest import read_prepared

    base = f"ram://{uuid.uuid4().hex}"
    shapes = write_shapes(_join(base, "pets"))
    out = _join(base, "prepared")
    assert main(["prepare", "--data", shapes["class_folders"], "--data-format", "class_folders",
                 "--output-dir", out, "--shards", "2"]) == 0
    prepared = read_prepared(out)
    source = read_manifest(shapes["csv"])
    assert prepared.frame[["row", "image", "text", "label"]].to_dict("list") == _columns(source)
    assert len(prepared.records) == 2 and all(r.startswith(base) for r in prepared.records)
