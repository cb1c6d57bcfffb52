"""Synthetic WebDataset shards for the demo and the tests: no downloads needed.

Images are smooth colour fields with shapes and mild noise (so they compress like photos
rather than like noise or flat colour), JPEG-encoded at OpenImages-like sizes and qualities,
with 16-hex keys and a JSON member carrying a class id, as in the OpenImages shards the
webdataset docs use.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .tar_writer import TarWriter

CLASSES = ("circle", "square", "triangle")


def synthetic_image(rng: np.random.Generator, width: int, height: int, cls: int) -> Image.Image:
    """A photo-like RGB image with one shape whose kind is the class."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(30, 220, size=3).astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, size=(3, 2)).astype(np.float32)
    channels = [base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    size = int(min(width, height) * rng.uniform(0.25, 0.6))
    left = int(rng.integers(0, width - size))
    top = int(rng.integers(0, height - size))
    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
    box = (left, top, left + size, top + size)
    if CLASSES[cls] == "circle":
        draw.ellipse(box, fill=colour)
    elif CLASSES[cls] == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(left, top + size), (left + size // 2, top), (left + size, top + size)], fill=colour
        )
    return image


def write_shard(
    path: Path, *, samples: int, seed: int, min_side: int = 500, max_side: int = 1024
) -> int:
    """Write one shard of `samples` jpg+json samples; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        writer = TarWriter(stream)
        for _ in range(samples):
            key = rng.bytes(8).hex()
            cls = int(rng.integers(0, len(CLASSES)))
            width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            image = synthetic_image(rng, width, height, cls)
            jpeg = io.BytesIO()
            image.save(jpeg, "JPEG", quality=int(rng.integers(75, 96)))
            writer.add(f"{key}.jpg", jpeg.getvalue())
            label = {"cls": cls, "label": CLASSES[cls], "width": width, "height": height}
            writer.add(f"{key}.json", json.dumps(label).encode())
        size, _ = writer.close()
    return size


def write_shards(
    directory: Path, *, shards: int, samples: int, prefix: str = "in", **kwargs: int
) -> list[Path]:
    """`prefix-000000.tar` ... in `directory`, each with a different seed."""
    paths = [directory / f"{prefix}-{index:06d}.tar" for index in range(shards)]
    for index, path in enumerate(paths):
        write_shard(path, samples=samples, seed=index, **kwargs)
    return paths
