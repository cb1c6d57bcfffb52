"""Realistic benchmark shards made from real photographs that ship inside wheels.

No downloads: the colour photographs bundled with scikit-image (astronaut, chelsea, coffee,
two motorcycles, rocket) and scikit-learn (china, flower) are cropped, rescaled and
re-encoded as JPEGs the way OpenImages shards look: both sides 500 to 1024 px, quality 75 to
95, 16-hex keys, and a JSON member with a class (the source photo's index). Synthetic colour
fields would compress far better than photos and flatter every PNG encoder; real photos keep
the size and speed figures honest.

One caveat: the source photos are 300 to 741 px, so most samples are upscaled, which makes
them smoother than camera photos at native resolution; PNG files are then somewhat smaller
than they would be on OpenImages, for every pipeline alike.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = (
    ("skimage.data", "astronaut.png"),
    ("skimage.data", "chelsea.png"),
    ("skimage.data", "coffee.png"),
    ("skimage.data", "motorcycle_left.png"),
    ("skimage.data", "motorcycle_right.png"),
    ("skimage.data", "rocket.jpg"),
    ("sklearn.datasets.images", "china.jpg"),
    ("sklearn.datasets.images", "flower.jpg"),
)
MIN_SIDE, MAX_SIDE = 500, 1024


def load_photos() -> list[Image.Image]:
    """The source photographs, read as files from inside the installed wheels (no fetching)."""
    photos = []
    for package, name in PHOTOS:
        with (resources.files(package) / name).open("rb") as stream:
            photos.append(Image.open(stream).convert("RGB"))
    return photos


@dataclass(frozen=True)
class Sample:
    key: str
    jpeg: bytes
    meta: bytes


def make_sample(rng: np.random.Generator, photos: list[Image.Image]) -> Sample:
    """A random crop of a random photo, rescaled to 500-1024 px a side and saved as a JPEG.

    The longer side is drawn from 640-1024 and the aspect ratio from 16:9 to square (three in
    four landscape), so shorter sides spread over 500-1024 px as in OpenImages; the crop has
    the output's aspect ratio, so nothing is stretched.
    """
    cls = int(rng.integers(len(photos)))
    photo = photos[cls]
    longer = int(rng.integers(640, MAX_SIDE + 1))
    shorter = max(MIN_SIDE, round(longer * rng.uniform(9 / 16, 1.0)))
    size = (longer, shorter) if rng.random() < 0.75 else (shorter, longer)
    width, height = photo.size
    fit = min(width / size[0], height / size[1]) * rng.uniform(0.6, 1.0)
    crop_w, crop_h = size[0] * fit, size[1] * fit
    left = rng.uniform(0, width - crop_w)
    top = rng.uniform(0, height - crop_h)
    box = (left, top, left + crop_w, top + crop_h)
    image = photo.resize(size, Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
    meta = {"cls": cls, "label": PHOTOS[cls][1].split(".")[0], "width": size[0], "height": size[1]}
    return Sample(rng.bytes(8).hex(), buffer.getvalue(), json.dumps(meta).encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[Sample]) -> int:
    """A plain GNU tar written by Python's tarfile, as most shard producers do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for sample in samples:
            _add(tar, f"{sample.key}.jpg", sample.jpeg)
            _add(tar, f"{sample.key}.json", sample.meta)
    return path.stat().st_size


def build_shards(directory: Path, *, shards: int, samples: int, seed: int = 0) -> list[Path]:
    """`bench-000000.tar`...: reused when already built with the same parameters."""
    stamp = directory / f"built-{shards}x{samples}-seed{seed}"
    paths = [directory / f"bench-{index:06d}.tar" for index in range(shards)]
    if stamp.exists() and all(path.exists() for path in paths):
        return paths
    photos = load_photos()
    rng = np.random.default_rng(seed)
    for path in paths:
        write_shard(path, [make_sample(rng, photos) for _ in range(samples)])
    for old in directory.glob("built-*"):
        old.unlink()
    stamp.touch()
    return paths


def build_big_shard(path: Path, *, gigabytes: float, seed: int = 1) -> Path:
    """A shard of about `gigabytes` GB, written as a stream (the builder's memory stays flat).

    Its images cycle through a pool of 256 distinct JPEGs under fresh keys: the pixels do not
    matter for a memory measurement, the length of the stream does. Returns (path, samples).
    """
    target = int(gigabytes * 1e9)
    if path.exists() and path.stat().st_size >= target:
        return path
    photos = load_photos()
    rng = np.random.default_rng(seed)
    pool = [make_sample(rng, photos) for _ in range(256)]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    count = 0
    with open(partial, "wb") as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
        while stream.tell() < target:
            sample = pool[count % len(pool)]
            key = rng.bytes(8).hex()
            _add(tar, f"{key}.jpg", sample.jpeg)
            _add(tar, f"{key}.json", sample.meta)
            count += 1
    partial.rename(path)
    return path


def build_tiny_shards(directory: Path, *, shards: int, samples: int) -> list[Path]:
    """Shards of tiny samples (an 8x8 PNG and a class; every tenth image the same bytes): many
    samples for little I/O, to measure what grows with the sample count."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    base = buffer.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    paths, number = [], 0
    for shard in range(shards):
        path = directory / f"s-{shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(samples):
                number += 1
                image = base if number % 10 == 0 else base + number.to_bytes(8, "big")
                for name, payload in ((f"{number:09d}.png", image), (f"{number:09d}.cls", b"1")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths
