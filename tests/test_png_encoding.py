"""The fast PNG path (Up filter + ISA-L) and its Pillow fallback write the same pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from shardflow.steps import encoders

from helpers import image_bytes


def photo(mode: str) -> Image.Image:
    """A photo-like image in `mode`, with a gradient alpha band for LA and RGBA."""
    image = Image.open(io.BytesIO(image_bytes(97, 61, seed=3))).convert(mode.rstrip("A"))
    if mode.endswith("A"):
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    found, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        data = png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(data, zlib.crc32(kind)), kind
        found.append((kind, data))
        offset += 12 + length
    return found


def row_filters(png: bytes, image: Image.Image) -> set[int]:
    idat = b"".join(data for kind, data in chunks(png) if kind == b"IDAT")
    raw = zlib.decompress(idat)
    stride = 1 + image.width * len(image.getbands())
    return {raw[row * stride] for row in range(image.height)}


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_fast_png_is_lossless_and_uses_the_up_filter(mode: str) -> None:
    pytest.importorskip("isal")
    image = photo(mode)
    png = encoders.encode_png_fast(image)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == mode
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert [kind for kind, _ in chunks(png)] == [b"IHDR", b"IDAT", b"IEND"]
    assert row_filters(png, image) == {2}


def test_without_isal_pillow_writes_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    image = photo("RGB")
    monkeypatch.setattr(encoders, "fast_deflate", None)
    png = encoders.encode_png_fast(image)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))
    assert len(row_filters(png, image)) > 1  # Pillow's adaptive per-row filters


def test_icc_profile_is_kept_through_pillow() -> None:
    image = photo("RGB")
    image.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    png = encoders.encode_png_fast(image)
    assert b"iCCP" in [kind for kind, _ in chunks(png)]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))


def test_png_level_one_goes_through_the_fast_path_and_others_through_pillow() -> None:
    pytest.importorskip("isal")
    image = photo("RGB")
    level1 = encoders.MemberEncoder("png", "image", "png", {"compress_level": 1}).encode(image)
    level9 = encoders.MemberEncoder("png", "image", "png", {"compress_level": 9}).encode(image)
    assert row_filters(level1, image) == {2}
    assert len(row_filters(level9, image)) > 1
    for png in (level1, level9):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))
