"""The embedded demo dataset: seeded images + captions whose label needs both.

Each example shows one shape (circle, square or triangle) drawn in a neutral
gray on a noisy background; its colour is named only in the caption. The label
is ``"<colour> <shape>"``, so an image-only model can read the shape but not the
colour, a text-only model the colour but not the shape, and only a model that
fuses both can be right on every row.
"""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

COLOURS = ("red", "green", "blue")
SHAPES = ("circle", "square", "triangle")
TEMPLATES = (
    "a {c} one",
    "this thing is {c}",
    "painted {c}",
    "the colour here is {c}",
    "it should be shown in {c}",
    "{c}, as the caption says",
    "imagine it coloured {c}",
    "a picture of something {c}",
)


def draw_shape(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    """Draws one gray ``shape`` (one of :data:`SHAPES`) at a random place and scale on a noisy
    ``size`` x ``size`` background; the demo images are made with it.

    Example:
        >>> draw_shape(np.random.default_rng(0), "circle", 64).save("circle.png")
    """
    bg = rng.integers(0, 70, size=(size, size, 1), dtype=np.uint8).repeat(3, axis=2)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    gray = int(rng.integers(170, 256))
    fill = (gray, gray, gray)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def write_demo_dataset(
    out_dir: str,
    *,
    n_train: int = 1800,
    n_val: int = 300,
    n_test: int = 450,
    image_size: int = 32,
    seed: int = 0,
) -> dict:
    """Writes images and ``train.csv``/``val.csv``/``test.csv`` manifests.

    Args:
        out_dir: folder to write into (created if needed).
        n_train, n_val, n_test: number of rows of each split.
        image_size: side of the square PNG images, in pixels.
        seed: the same seed writes byte-identical data.

    Returns:
        dict from split name (``train``, ``val``, ``test``) to manifest path.

    Example:
        >>> paths = write_demo_dataset("/tmp/demo", n_train=90, n_val=18, n_test=18)
        >>> sorted(paths)
        ['test', 'train', 'val']
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        manifest = os.path.join(out_dir, f"{split}.csv")
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "text", "label"])
            for i in range(n):
                # Cycle through the classes so every split is balanced.
                k = i % (len(COLOURS) * len(SHAPES))
                colour, shape = COLOURS[k // len(SHAPES)], SHAPES[k % len(SHAPES)]
                rel = f"images/{split}_{i:05d}.png"
                draw_shape(rng, shape, image_size).save(os.path.join(out_dir, rel))
                template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
                writer.writerow([rel, template.format(c=colour), f"{colour} {shape}"])
        paths[split] = manifest
    logger.info("wrote demo dataset to %s (%d/%d/%d rows)", out_dir, n_train, n_val, n_test)
    return paths
