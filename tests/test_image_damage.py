"""Images Pillow would turn into garbage counted as written: 16-bit PNGs (all white or all
black before), a PNG whose image data fails its chunk CRC, a JPEG damaged mid-stream. Pixel
values are checked against numpy; damage fails the sample, naming the shard and the key."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardflow.steps import images
from shardflow.steps.pipeline import Pipeline
from shardflow.steps.recipe import load_recipe
from shardflow.steps.samples import RawSample

from helpers import image_bytes, run_cli, write_tar

GRAY, GRAY_ALPHA, RGB, RGBA = 0, 4, 2, 6  # PNG colour types
BANDS = {GRAY: 1, GRAY_ALPHA: 2, RGB: 3, RGBA: 4}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(levels: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG of `levels` (height x width [x bands], uint16): Pillow cannot write one."""
    height, width = levels.shape[:2]
    rows = levels.astype(">u2").reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def gradient16(height: int, width: int, bands: int, seed: int = 0) -> np.ndarray:
    """Smooth 16-bit levels over most of the range, with noise in the low byte."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(4000, 60000, width)[None, :, None] + np.zeros((height, 1, bands))
    ramp += np.linspace(0, 3000, height)[:, None, None]
    levels = (ramp + rng.integers(0, 256, ramp.shape)).clip(0, 65535).astype(np.uint16)
    return levels[..., 0] if bands == 1 else levels


def process(recipe: str, members: dict[str, bytes]) -> dict[str, bytes]:
    pipeline = Pipeline(load_recipe(recipe), max_pixels=64_000_000, allowed_plugins=())
    outcome = pipeline.process(RawSample("k", members, {k: len(v) for k, v in members.items()}))
    assert outcome.members is not None, outcome.failed
    return {name.split(".", 1)[1]: bytes(data) for name, data in outcome.members}


@pytest.mark.parametrize("color_type", [GRAY, GRAY_ALPHA, RGB, RGBA])
def test_16_bit_pngs_keep_their_high_byte(color_type: int) -> None:
    levels = gradient16(20, 30, BANDS[color_type])
    image = images.decode_image(png16(levels, color_type), "png", max_pixels=10**6)
    rgb = np.asarray(images.convert_mode(image, "RGB"))
    high = (levels >> 8).astype(np.uint8)
    expected = {
        GRAY: np.dstack([high] * 3),
        GRAY_ALPHA: np.dstack([high[..., 0]] * 3),
        RGB: high,
        RGBA: high[..., :3],
    }[color_type]
    assert np.array_equal(rgb, expected)


def test_seed_normalises_a_16_bit_grayscale_png_as_numpy_does() -> None:
    levels = gradient16(40, 60, 1)
    out = process("seed", {"png": png16(levels, GRAY), "json": b'{"cls": 1}'})
    pixels = np.asarray(Image.open(io.BytesIO(out["png"])))
    # The docs recipe's arithmetic on the 8-bit levels: float32, min-max, truncated.
    x = (levels >> 8).astype(np.float32) / np.float32(255)
    x = (x - x.min()) / (x - x.min()).max()
    expected = (x * np.float32(255)).astype(np.uint8)
    assert np.array_equal(pixels, np.dstack([expected] * 3))
    assert 0 < pixels.mean() < 255  # not the all-black image it used to be


def test_train_224_gives_a_16_bit_png_the_pixels_of_its_8_bit_version() -> None:
    levels = gradient16(260, 300, 1)
    as_8_bit = io.BytesIO()
    Image.fromarray((levels >> 8).astype(np.uint8)).save(as_8_bit, "PNG")
    deep = process("train-224", {"png": png16(levels, GRAY), "json": b'{"cls": 1}'})
    shallow = process("train-224", {"png": as_8_bit.getvalue(), "json": b'{"cls": 1}'})
    assert deep["jpg"] == shallow["jpg"]
    mean = np.asarray(Image.open(io.BytesIO(deep["jpg"]))).mean()
    assert abs(mean - (levels >> 8).mean()) < 8  # not the all-white image it used to be


def pillow_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def silently_damaged_png() -> bytes:
    """A PNG with one bit of its image data flipped, its chunk CRC left as it was, which
    Pillow decodes without a word into other pixels. Most flips break the deflate stream;
    those near its end do not: Pillow stops after the last row, before zlib's checksum."""
    png = image_bytes(64, 48, fmt="PNG", seed=1)
    good = pillow_pixels(png)
    start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[start - 8 : start - 4])
    for offset in range(start + length - 5, start, -1):
        damaged = bytearray(png)
        damaged[offset] ^= 0x01
        try:
            pixels = pillow_pixels(bytes(damaged))
        except OSError:
            continue
        if not np.array_equal(pixels, good):
            return bytes(damaged)
    raise AssertionError("no flipped bit decodes silently")


def cut_mid_stream(jpeg: bytes) -> bytes:
    """The JPEG with 1 kB of its entropy-coded data gone, end-of-image marker intact (a lost
    disk block or network segment): libjpeg warns and fills in, Pillow says nothing."""
    scan = jpeg.index(b"\xff\xda")
    middle = scan + (len(jpeg) - scan) // 2
    return jpeg[:middle] + jpeg[middle + 1024 :]


def damaged_shard(path: Path) -> Path:
    jpeg = image_bytes(256, 192, seed=2, quality=90)
    label = json.dumps({"cls": 1}).encode()
    return write_tar(
        path,
        [
            ("good.jpg", jpeg),
            ("good.json", label),
            ("badcrc.png", silently_damaged_png()),
            ("badcrc.json", label),
            ("cut.jpg", cut_mid_stream(jpeg)),
            ("cut.json", label),
        ],
    )


def test_pillow_alone_decodes_the_damage_into_other_pixels() -> None:
    """The premise: without the checks these members become garbage images."""
    jpeg = image_bytes(256, 192, seed=2, quality=90)
    good, cut = pillow_pixels(jpeg), pillow_pixels(cut_mid_stream(jpeg))  # no error
    assert good.shape == cut.shape and not np.array_equal(good, cut)
    assert silently_damaged_png()  # found: decoded without error, other pixels


def test_damaged_images_fail_their_sample_with_the_reason(tmp_path: Path) -> None:
    source = damaged_shard(tmp_path / "in.tar")
    result = run_cli("augment", source, tmp_path / "out.tar", "--max-failed", "1")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    reasons = {entry["key"]: entry["reason"] for entry in manifest["failed"]}
    assert set(reasons) == {"badcrc", "cut"}
    assert "checksum" in reasons["badcrc"] and "IDAT" in reasons["badcrc"]
    assert "Corrupt JPEG data" in reasons["cut"]
    assert manifest["counts"]["written"] == 1


@pytest.mark.parametrize(("key", "cause"), [("badcrc", "checksum"), ("cut", "Corrupt JPEG")])
def test_with_on_error_fail_the_damage_fails_the_shard_naming_it_and_the_key(
    tmp_path: Path, key: str, cause: str
) -> None:
    source = damaged_shard(tmp_path / "in.tar")
    members = [(n, d) for n, d in _members(source) if n.startswith(key + ".")]
    only = write_tar(tmp_path / f"{key}.tar", members)
    result = run_cli("augment", only, tmp_path / "out.tar", "--on-error", "fail")
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert str(only) in line and f"key {key!r}" in line and cause in line, line
    assert not (tmp_path / "out.tar").exists()


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
