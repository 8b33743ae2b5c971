"""Tux Paint's stamps as an image + text classification dataset.

Debian's ``tuxpaint-stamps-default`` package (GPL-2, about 160 MB) holds the clip art and
photographs that children stamp in Tux Paint, in a tree of topic folders::

    /usr/share/tuxpaint/stamps/
        animals/birds/blackbird.png       the image (most have a transparent background)
        animals/birds/blackbird.txt       its description, written by the stamp's author:
                                          "A blackbird." on the first line, then
                                          translations as "fr.utf8=Un merle."
        food/fruit/apple_sierra_beauty.png  "A “Sierra Beauty” apple."
        ...

Each stamp becomes one manifest row: the image (flattened onto white, since tfmm decodes
RGB), the English description as ``text`` and the top-level folder (``animals``, ``food``,
``town``, ...) as ``label``. Stamps without a description (``*_mirror.png`` variants), SVG-only
stamps and the letter glyphs of ``symbols/alphabets`` are left out, and so are topics with
fewer than ``min_per_class`` stamps; every exclusion is counted in ``source.json``.

Get the package with Debian's own client, either installed::

    sudo apt-get update && sudo apt-get install tuxpaint-stamps-default

or only downloaded and unpacked (no root needed; what :func:`fetch_stamps` does)::

    apt-get download tuxpaint-stamps-default && dpkg-deb -x tuxpaint-stamps-default_*.deb root/

Example:
    >>> stamps = find_or_fetch_stamps(None, "runs/tuxpaint/package")
    >>> paths = prepare_dataset(stamps, "runs/tuxpaint/data", seed=0)
    >>> paths["train"]
    'runs/tuxpaint/data/train.csv'
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os
import re
import subprocess
from typing import Iterable, Optional, Sequence

PACKAGE = "tuxpaint-stamps-default"
INSTALLED_STAMPS = "/usr/share/tuxpaint/stamps"
STAMPS_IN_PACKAGE = os.path.join("usr", "share", "tuxpaint", "stamps")
DEFAULT_EXCLUDE = ("symbols/alphabets",)  # ~200 letter glyphs: "The letter v."
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("image", "text", "label")

# A translation line of a stamp description: "fr.utf8=...", "pt_BR.utf8=...", "sr@latin.utf8=..."
_LOCALE_LINE = re.compile(r"^[A-Za-z]{2,3}(_[A-Za-z]{2})?(@[A-Za-z]+)?\.utf-?8=", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Stamp:
    """One stamp: its PNG (relative to the stamps folder), English description and topic."""

    image: str
    text: str
    label: str


def fetch_stamps(cache_dir: str) -> str:
    """Downloads and unpacks the Debian package with ``apt-get download`` + ``dpkg-deb -x``.

    Args:
        cache_dir: folder for the ``.deb`` and its unpacked tree (reused when present).

    Returns:
        The stamps folder inside the unpacked tree.

    Raises:
        RuntimeError: ``apt-get``/``dpkg-deb`` failed (the message says what to run instead).
    """
    root = os.path.join(cache_dir, "root")
    stamps = os.path.join(root, STAMPS_IN_PACKAGE)
    if os.path.isdir(stamps):
        return stamps
    os.makedirs(cache_dir, exist_ok=True)
    debs = glob.glob(os.path.join(cache_dir, f"{PACKAGE}_*.deb"))
    if not debs:
        _run(["apt-get", "download", PACKAGE], cwd=cache_dir)
        debs = glob.glob(os.path.join(cache_dir, f"{PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {PACKAGE} wrote no .deb into {cache_dir}")
    _run(["dpkg-deb", "-x", sorted(debs)[-1], root], cwd=cache_dir)
    if not os.path.isdir(stamps):
        raise RuntimeError(f"{sorted(debs)[-1]} has no {STAMPS_IN_PACKAGE}/ folder")
    return stamps


def _run(command: Sequence[str], cwd: str) -> None:
    try:
        subprocess.run(list(command), cwd=cwd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise RuntimeError(
            f"`{' '.join(command)}` failed in {cwd}: {detail.strip()}\n"
            f"Run `apt-get update` first, or install the package yourself "
            f"(`sudo apt-get install {PACKAGE}`) and pass --stamps-dir {INSTALLED_STAMPS}."
        ) from e


def find_or_fetch_stamps(stamps_dir: Optional[str], cache_dir: str) -> str:
    """The stamps folder: ``stamps_dir``, else the installed package, else :func:`fetch_stamps`.

    Raises:
        FileNotFoundError: ``stamps_dir`` was given and is not a folder.
    """
    if stamps_dir:
        if not os.path.isdir(stamps_dir):
            raise FileNotFoundError(f"--stamps-dir {stamps_dir!r} is not a folder")
        return stamps_dir
    if os.path.isdir(INSTALLED_STAMPS):
        return INSTALLED_STAMPS
    return fetch_stamps(cache_dir)


def read_description(path: str) -> str:
    """The English description of a stamp: the first line of its ``.txt`` that is not a
    translation (``xx.utf8=...``), whitespace collapsed; ``""`` when there is none."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = " ".join(line.split())
            if line and not _LOCALE_LINE.match(line):
                return line
    return ""


def collect_stamps(
    stamps_dir: str,
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    min_per_class: int = 10,
) -> tuple:
    """Lists the stamps usable as rows, sorted by path.

    Args:
        stamps_dir: the package's stamps folder.
        exclude: folder prefixes (relative, ``/``-separated) to leave out.
        min_per_class: topics with fewer usable stamps are left out.

    Returns:
        ``(stamps, counts)``: a list of :class:`Stamp` and a dict of how many files were
        left out and why.

    Raises:
        ValueError: no stamp is left (wrong folder?).
    """
    exclude = tuple(p.strip("/") + "/" for p in exclude)
    counts = collections.Counter()
    found = []
    for path in sorted(glob.glob(os.path.join(stamps_dir, "**", "*.png"), recursive=True)):
        rel = os.path.relpath(path, stamps_dir).replace(os.sep, "/")
        if "/" not in rel:
            counts["png at the top level (no topic)"] += 1
            continue
        if rel.startswith(exclude):
            counts["excluded folder"] += 1
            continue
        txt = os.path.splitext(path)[0] + ".txt"
        text = read_description(txt) if os.path.isfile(txt) else ""
        if not text:
            counts["no description"] += 1
            continue
        found.append(Stamp(image=rel, text=text, label=rel.split("/", 1)[0]))
    for path in glob.glob(os.path.join(stamps_dir, "**", "*.svg"), recursive=True):
        if not os.path.exists(os.path.splitext(path)[0] + ".png"):
            counts["SVG only (not rasterized)"] += 1
    per_class = collections.Counter(s.label for s in found)
    small = {label for label, n in per_class.items() if n < min_per_class}
    stamps = [s for s in found if s.label not in small]
    counts[f"topic with < {min_per_class} stamps"] = sum(per_class[label] for label in small)
    if not stamps:
        raise ValueError(
            f"no usable stamp under {stamps_dir!r} (PNG + .txt description in a topic folder); "
            f"left out: {dict(counts)}"
        )
    return stamps, {k: v for k, v in counts.items() if v}


def stratified_split(
    stamps: Sequence[Stamp], *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict:
    """Splits stamps into train/val/test, stratified by label and seeded.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by image path.

    Raises:
        ValueError: fractions outside (0, 1) or summing to >= 1, or a class too small to
            appear in every split.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) and sum to < 1; "
            f"received {val_fraction!r} and {test_fraction!r}"
        )
    stamps = sorted(stamps, key=lambda s: s.image)
    labels = [s.label for s in stamps]
    rest, test = train_test_split(stamps, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=[s.label for s in rest],
        random_state=seed,
    )
    return {name: sorted(part, key=lambda s: s.image) for name, part in zip(SPLITS, (train, val, test))}


def fold_split(stamps: Sequence[Stamp], *, folds: int, fold: int, seed: int = 0) -> dict:
    """Fold ``fold`` of a stratified, seeded ``folds``-fold cross-validation.

    The stamps are cut into ``folds`` stratified parts; fold ``k`` tests on part ``k``, stops
    early on part ``k + 1`` (mod ``folds``) and trains on the rest. Over the ``folds`` folds every
    stamp is a test row exactly once (5 folds: 60/20/20, the proportions of
    :func:`stratified_split`).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by image path.

    Raises:
        ValueError: ``folds`` < 3, ``fold`` outside ``[0, folds)``, or a class with fewer
            stamps than ``folds``.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 3 or not 0 <= fold < folds:
        raise ValueError(f"folds must be >= 3 and fold in [0, folds); received folds={folds!r}, fold={fold!r}")
    stamps = sorted(stamps, key=lambda s: s.image)
    labels = [s.label for s in stamps]
    small = {k: n for k, n in collections.Counter(labels).items() if n < folds}
    if small:
        raise ValueError(f"{folds} folds need >= {folds} stamps per topic; these have fewer: {small}")
    parts = [test for _, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(stamps, labels)]
    test, val = set(parts[fold]), set(parts[(fold + 1) % folds])
    held_out = test | val
    chosen = {"train": [i for i in range(len(stamps)) if i not in held_out], "val": sorted(val),
              "test": sorted(test)}
    return {name: [stamps[i] for i in chosen[name]] for name in SPLITS}


def image_file_name(stamp: Stamp) -> str:
    """Where a stamp's flattened image goes, relative to the manifests' folder."""
    return "images/" + stamp.image.replace("/", "__")


def flatten_onto_white(source: str, target: str) -> None:
    """Writes ``source`` as an RGB PNG, its transparent parts made white (what tfmm's decoder does
    with a transparent PNG too; flattened here so the manifests' images are plain RGB files)."""
    from PIL import Image

    with Image.open(source) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    canvas.save(target, format="PNG")


def write_manifest(path: str, stamps: Sequence[Stamp]) -> None:
    """Writes a tfmm manifest (CSV ``image,text,label``)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for stamp in stamps:
            writer.writerow((image_file_name(stamp), stamp.text, stamp.label))


def prepare_dataset(
    stamps_dir: str,
    out_dir: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    min_per_class: int = 10,
    folds: Optional[int] = None,
    fold: int = 0,
) -> dict:
    """Writes ``out_dir/{train,val,test}.csv``, ``out_dir/images/`` and ``out_dir/source.json``.

    Images already written are kept, so preparing again with another seed is quick. Given
    ``folds``, the split is fold ``fold`` of :func:`fold_split` (the fractions are then unused)
    and the files are named ``train_fold{fold}of{folds}.csv`` etc., beside the others.

    Returns:
        ``{"train": path, "val": path, "test": path, "source": path}``.
    """
    stamps, left_out = collect_stamps(stamps_dir, exclude=exclude, min_per_class=min_per_class)
    if folds:
        splits, suffix = fold_split(stamps, folds=folds, fold=fold, seed=seed), f"_fold{fold}of{folds}"
    else:
        splits, suffix = stratified_split(stamps, val_fraction=val_fraction, test_fraction=test_fraction,
                                          seed=seed), ""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    for stamp in stamps:
        target = os.path.join(out_dir, image_file_name(stamp))
        if not os.path.exists(target):
            flatten_onto_white(os.path.join(stamps_dir, stamp.image), target)
    paths = {}
    for name, part in splits.items():
        paths[name] = os.path.join(out_dir, f"{name}{suffix}.csv")
        write_manifest(paths[name], part)
    source = {
        "package": PACKAGE,
        "package_version": package_version(stamps_dir),
        "license": "GPL-2 (Debian copyright file of the package)",
        "stamps_dir": os.path.abspath(stamps_dir),
        "seed": seed,
        "fold": f"{fold} of {folds}" if folds else None,
        "rows": {name: len(part) for name, part in splits.items()},
        "classes": dict(sorted(collections.Counter(s.label for s in stamps).items())),
        "left_out": left_out,
        "exclude": list(exclude),
        "min_per_class": min_per_class,
    }
    paths["source"] = os.path.join(out_dir, f"source{suffix}.json")
    with open(paths["source"], "w", encoding="utf-8") as f:
        json.dump(source, f, indent=2)
    return paths


def package_version(stamps_dir: str) -> str:
    """The package version: from dpkg for the installed package, else from the ``.deb``'s
    name next to an unpacked tree; ``"unknown"`` otherwise."""
    if os.path.abspath(stamps_dir) == INSTALLED_STAMPS:
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE],
                                 check=True, capture_output=True, text=True)
            return out.stdout.strip() or "unknown"
        except (OSError, subprocess.CalledProcessError):
            return "unknown"
    root = os.path.abspath(stamps_dir)
    for _ in STAMPS_IN_PACKAGE.split(os.sep) + ["root"]:
        root = os.path.dirname(root)
    debs = sorted(glob.glob(os.path.join(root, f"{PACKAGE}_*.deb")))
    return os.path.basename(debs[-1])[len(PACKAGE) + 1:].rsplit("_", 1)[0] if debs else "unknown"
