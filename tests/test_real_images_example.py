"""The real-image example's data preparation (examples/real_images/tuxpaint_stamps.py), on a
handful of fake stamps laid out like Debian's tuxpaint-stamps-default package. No training."""

import csv
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "examples", "real_images", "tuxpaint_stamps.py")
_spec = importlib.util.spec_from_file_location("tuxpaint_stamps", _PATH)
stamps_mod = importlib.util.module_from_spec(_spec)
sys.modules["tuxpaint_stamps"] = stamps_mod  # dataclasses look their module up there
_spec.loader.exec_module(stamps_mod)

# topic -> stamps; "sports" is too small for min_per_class=10 and must be dropped.
TOPICS = {"animals": 20, "food": 15, "town": 10, "sports": 3}


def _write_stamp(path, text_lines, color):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent background
    image.paste(Image.new("RGBA", (4, 4), (*color, 255)), (2, 2))
    image.save(path + ".png")
    if text_lines is not None:
        with open(path + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(text_lines) + "\n")


@pytest.fixture()
def stamps_dir(tmp_path):
    root = tmp_path / "usr" / "share" / "tuxpaint" / "stamps"
    for t, (topic, n) in enumerate(TOPICS.items()):
        for i in range(n):
            sub = "cartoon/" if i % 2 else ""
            _write_stamp(str(root / topic / "sub" / f"{sub}{topic}_{i}"),
                         ["", f"  A   {topic} number {i}.  ", f"fr.utf8=Un {topic} {i}.", "pt_BR.utf8=x"],
                         (40 * t, 200, 10 * i))
    _write_stamp(str(root / "animals" / "sub" / "animals_0_mirror"), None, (1, 2, 3))  # no .txt
    _write_stamp(str(root / "symbols" / "alphabets" / "a"), ["The letter a."], (9, 9, 9))
    _write_stamp(str(root / "food" / "only_translations"), ["de.utf8=Nur Deutsch."], (5, 5, 5))
    (root / "town" / "vector_only.svg").write_text("<svg/>", encoding="utf-8")
    (root / "town" / "vector_only.txt").write_text("A vector drawing.", encoding="utf-8")
    return str(root)


def _read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_read_description_takes_the_english_line(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\nA calculator.  6x7=42\nes.utf8=Una calculadora.\n", encoding="utf-8")
    assert stamps_mod.read_description(str(path)) == "A calculator. 6x7=42"
    path.write_text("sr@latin.utf8=Kalkulator\n", encoding="utf-8")
    assert stamps_mod.read_description(str(path)) == ""


def test_prepare_dataset_splits_stratified_and_disjoint(stamps_dir, tmp_path):
    out = str(tmp_path / "data")
    paths = stamps_mod.prepare_dataset(stamps_dir, out, seed=3, min_per_class=10)
    rows = {split: _read(paths[split]) for split in stamps_mod.SPLITS}

    # 45 usable stamps (sports, the mirror, the letter and the translation-only stamp are out).
    assert {k: len(v) for k, v in rows.items()} == {"train": 27, "val": 9, "test": 9}
    images = [r["image"] for split in rows.values() for r in split]
    assert len(images) == len(set(images)) == 45  # no row in two splits
    for split, part in rows.items():  # stratified: each split holds each topic in proportion
        counts = {t: sum(r["label"] == t for r in part) for t in ("animals", "food", "town")}
        expected = {"train": (12, 9, 6), "val": (4, 3, 2), "test": (4, 3, 2)}[split]
        assert tuple(counts.values()) == expected, (split, counts)
        assert all(r["text"].strip() and "utf8=" not in r["text"] for r in part)
        assert all(r["text"] == f"A {r['label']} number {r['image'].split('_')[-1][:-4]}." for r in part)

    # Images are flattened onto white RGB: the transparent corner is white, the square kept.
    first = rows["train"][0]
    with Image.open(os.path.join(out, first["image"])) as image:
        assert image.mode == "RGB"
        pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[3, 3].tolist() != [255, 255, 255]

    source = json.loads(open(paths["source"], encoding="utf-8").read())
    assert source["classes"] == {"animals": 20, "food": 15, "town": 10}
    assert source["left_out"] == {"excluded folder": 1, "no description": 2,
                                  "SVG only (not rasterized)": 1, "topic with < 10 stamps": 3}

    # Seeded: the same seed gives the same split, another seed another one.
    again = stamps_mod.prepare_dataset(stamps_dir, str(tmp_path / "again"), seed=3, min_per_class=10)
    assert _read(again["test"]) == rows["test"]
    other = stamps_mod.prepare_dataset(stamps_dir, str(tmp_path / "other"), seed=4, min_per_class=10)
    assert _read(other["test"]) != rows["test"]


def test_no_usable_stamp_names_the_folder(tmp_path):
    with pytest.raises(ValueError, match="no usable stamp under"):
        stamps_mod.collect_stamps(str(tmp_path))


def test_folds_test_every_stamp_once_stratified_beside_the_fixed_split(stamps_dir, tmp_path):
    out = str(tmp_path / "data")
    fixed = stamps_mod.prepare_dataset(stamps_dir, out, seed=3, min_per_class=10)
    tested, validated = [], []
    for fold in range(5):
        paths = stamps_mod.prepare_dataset(stamps_dir, out, seed=3, min_per_class=10, folds=5, fold=fold)
        assert paths["test"] == os.path.join(out, f"test_fold{fold}of5.csv")
        rows = {split: _read(paths[split]) for split in stamps_mod.SPLITS}
        assert {k: len(v) for k, v in rows.items()} == {"train": 27, "val": 9, "test": 9}
        images = {split: {r["image"] for r in part} for split, part in rows.items()}
        assert len(set.union(*images.values())) == 45  # the three parts are disjoint and cover all
        for part in rows.values():  # stratified: 20/15/10 stamps are 4/3/2 per fifth
            assert [sum(r["label"] == t for r in part) for t in ("animals", "food", "town")] in (
                [4, 3, 2], [12, 9, 6])
        tested += sorted(images["test"])
        validated.append(images["val"])
        assert json.load(open(paths["source"], encoding="utf-8"))["fold"] == f"{fold} of 5"
    assert len(tested) == len(set(tested)) == 45  # every stamp is a test row exactly once
    # Fold k validates on the part fold k + 1 tests on.
    assert validated[0] == {r["image"] for r in _read(os.path.join(out, "test_fold1of5.csv"))}
    # The fixed split's files are left as they were.
    assert _read(fixed["test"]) == _read(stamps_mod.prepare_dataset(
        stamps_dir, str(tmp_path / "again"), seed=3, min_per_class=10)["test"])


def test_folds_refuse_too_few_stamps_per_topic(stamps_dir):
    stamps, _ = stamps_mod.collect_stamps(stamps_dir, min_per_class=10)
    with pytest.raises(ValueError, match=r"12 folds need >= 12 stamps per topic.*'town': 10"):
        stamps_mod.fold_split(stamps, folds=12, fold=0)
    with pytest.raises(ValueError, match="received folds=5, fold=5"):
        stamps_mod.fold_split(stamps, folds=5, fold=5)
