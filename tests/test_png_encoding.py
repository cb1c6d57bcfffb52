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
    png = bytes(encoders.encode_png_fast(image, "isal"))
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == mode
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert [kind for kind, _ in chunks(png)] == [b"IHDR", b"IDAT", b"IEND"]
    assert row_filters(png, image) == {2}


def test_without_isal_pillow_writes_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    image = photo("RGB")
    monkeypatch.setattr(encoders, "fast_deflate", None)
    monkeypatch.setattr(encoders, "fpng", None)
    png = bytes(encoders.encode_png_fast(image))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))
    assert len(row_filters(png, image)) > 1  # Pillow's adaptive per-row filters


def test_icc_profile_is_kept_through_pillow() -> None:
    image = photo("RGB")
    image.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    png = bytes(encoders.encode_png_fast(image))
    assert b"iCCP" in [kind for kind, _ in chunks(png)]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))


def test_png_level_one_goes_through_the_fast_path_and_others_through_pillow() -> None:
    pytest.importorskip("isal")
    image = photo("RGB")
    options = {"compress_level": 1, "encoder": "isal"}
    level1 = bytes(encoders.MemberEncoder("png", "image", "png", options).encode(image))
    level9 = encoders.MemberEncoder("png", "image", "png", {"compress_level": 9}).encode(image)
    assert row_filters(level1, image) == {2}
    assert len(row_filters(level9, image)) > 1
    for png in (level1, level9):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))


def test_the_tar_writer_writes_what_tarfile_writes(tmp_path) -> None:
    """TarWriter writes members straight to the sink (pieces, no BytesIO copy): the archive
    must be byte for byte what tarfile writes in GNU format, long names and padding included."""
    import hashlib
    import tarfile

    from shardflow.steps.tar_writer import Pieces, TarWriter, _member_info

    members = [
        ("a.png", Pieces(b"head", bytes(1000), b"tail")),
        ("a.cls", b"7"),
        ("b" * 150 + ".json", b"{}"),
        ("c.empty", b""),
        ("d.bin", bytes(range(256)) * 40),
    ]
    ours = io.BytesIO()
    writer = TarWriter(ours)
    for name, data in members:
        writer.add(name, data)
    writer.add_from("e.bin", 3000, io.BytesIO(bytes(3000)))
    size, sha256 = writer.close()
    reference = io.BytesIO()
    with tarfile.TarFile(fileobj=reference, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [*members, ("e.bin", bytes(3000))]:
            tar.addfile(_member_info(name, len(data)), io.BytesIO(bytes(data)))
    assert ours.getvalue() == reference.getvalue()
    assert (size, sha256) == (len(ours.getvalue()), hashlib.sha256(ours.getvalue()).hexdigest())
    with pytest.raises(OSError, match="unexpected end"):
        TarWriter(io.BytesIO()).add_from("f.bin", 10, io.BytesIO(b"short"))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("encoder", ["auto", "isal", "fpng", "pillow"])
def test_every_png_encoder_writes_the_same_pixels(encoder: str, mode: str) -> None:
    if not encoders.png_encoder_installed(encoder):
        pytest.skip(f"{encoder} is not installed")
    image = photo(mode)
    pixels = np.asarray(image)
    for value in (image, np.array(pixels)):  # a Pillow image, and numpy pixels
        png = bytes(encoders.encode_png_fast(value, encoder))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
        Image.open(io.BytesIO(png), formats=["PNG"]).verify()  # every chunk's CRC


def test_fpng_output_is_checked_before_it_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """fpng's binding returns an empty or damaged result instead of raising: such output must
    never be written. Pinned, the sample fails; auto falls back to the next encoder."""
    pytest.importorskip("fpng")
    image = photo("RGB")
    good = encoders.fpng_checked(np.asarray(image))
    assert good is not None
    for bad in (b"", good[:-5], good[:40] + bytes([good[40] ^ 1]) + good[41:], good + b"x"):
        monkeypatch.setattr(encoders.fpng, "from_ndarray", lambda _pixels, bad=bad: bad)
        assert encoders.fpng_checked(np.asarray(image)) is None
        with pytest.raises(encoders.EncodeError, match="fpng failed"):
            encoders.encode_png_fast(image, "fpng")
        fallback = bytes(encoders.encode_png_fast(image, "auto"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(fallback))), np.asarray(image))


def test_fpng_pinned_for_gray_falls_back_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    """fpng writes RGB and RGBA only: a gray image goes to the next encoder installed."""
    pytest.importorskip("fpng")
    monkeypatch.setattr(encoders, "fast_deflate", None)
    image = photo("L")
    png = bytes(encoders.encode_png_fast(np.asarray(image), "fpng"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))


def test_a_recipe_may_pin_the_png_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardflow.steps.errors import UsageError
    from shardflow.steps.params import RecipeError
    from shardflow.steps.pipeline import Pipeline
    from shardflow.steps.recipe import parse_recipe

    def recipe(**png):
        ops = [{"image": {}}, {"encode": {"members": {"png": {"from": "image", **png}}}}]
        return parse_recipe({"ops": ops})

    assert recipe(encoder="auto").hash() == recipe().hash()  # auto is the default
    assert recipe(encoder="pillow").hash() != recipe().hash()
    with pytest.raises(RecipeError, match="encoder must be one of"):
        recipe(encoder="libpng")
    with pytest.raises(RecipeError, match="compress_level 1 only"):
        recipe(encoder="isal", compress_level=6)
    pipeline = Pipeline(recipe(encoder="pillow"), max_pixels=1 << 20, allowed_plugins=[])
    assert pipeline.png_encoders["png"]["encoder"] == "pillow"
    monkeypatch.setattr(encoders, "fpng", None)
    with pytest.raises(UsageError, match=r"fpng.*not installed"):
        Pipeline(recipe(encoder="fpng"), max_pixels=1 << 20, allowed_plugins=[])
    monkeypatch.setattr(encoders, "fast_deflate", None)
    auto = Pipeline(recipe(), max_pixels=1 << 20, allowed_plugins=[])
    assert auto.png_encoders["png"]["encoder"] == "pillow"
