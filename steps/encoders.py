"""Turning field values back into member bytes.

Each output member names its format (inferred from the extension when obvious). Defaults
favour speed where the cost is large and the size gain small.

PNG at `compress_level` 1 (the default) is where the time goes, so it has a fast path. Pillow
tries four filters on every row (about 20 ms of a 0.7 Mpx photo whatever the level) and has
no option to skip that; measured on 0.7 Mpx photos, one core: Pillow level 6 (its default)
159 ms, level 1 42 ms (1.12x the size), level 1 with zlib's Z_RLE strategy 37 ms (1.04x).
Writing PNG's Up filter on every row (one vectorised subtraction) and deflating with ISA-L
at level 1 takes 6.5 ms for 1.12x the size, releasing the GIL throughout. So, for 8-bit L,
LA, RGB and RGBA images without an ICC profile or a transparency key: with the `fast-png`
extra (isal) installed, level 1 uses Up + ISA-L; without it, Pillow at level 1 with Z_RLE.
Both are lossless, so the pixels are the same either way; the bytes differ. Other levels
and images go to Pillow with its defaults. benchmarks/README.md has the full measurements.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .images import convert_mode

try:  # the `fast-png` extra
    from isal import isal_zlib as fast_deflate
except ImportError:  # pragma: no cover - depends on the installed extras
    fast_deflate = None  # type: ignore[assignment]

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
FORMATS = ("png", "jpg", "webp", "cls", "json", "txt", "raw")
_ALIASES = {"jpeg": "jpg"}

DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"compress_level": 1},
    "jpg": {"quality": 90},
    "webp": {"quality": 90, "lossless": False, "method": 4},
}


class EncodeError(Exception):
    """A field value cannot be written in the asked format."""


def infer_format(extension: str) -> str | None:
    """The format an output extension implies (`seg.png` -> png), or None if it implies none."""
    last = extension.rsplit(".", 1)[-1].lower()
    last = _ALIASES.get(last, last)
    return last if last in FORMATS and last != "raw" else None


@dataclass(frozen=True)
class MemberEncoder:
    """How one output member is produced: from which field, in which format, with options."""

    extension: str
    source: str
    format: str
    options: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        return {"from": self.source, "format": self.format, **self.options}

    def encode(self, value: Any) -> bytes:
        if self.format in IMAGE_FORMATS:
            return self._encode_image(value)
        if isinstance(value, bytes | bytearray | memoryview) and self.format != "cls":
            return bytes(value)
        if self.format == "cls":
            return _encode_class(value)
        if self.format == "json":
            return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
        if isinstance(value, str):
            return value.encode("utf-8")
        raise EncodeError(f"cannot write a {type(value).__name__} as {self.format}")

    def _encode_image(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray):
            raise EncodeError(
                f"field {self.source!r} holds undecoded bytes; decode it with an image step "
                f"before writing {self.format}"
            )
        if not isinstance(value, Image.Image):
            raise EncodeError(f"field {self.source!r} is a {type(value).__name__}, not an image")
        image = value
        if self.format == "jpg" and image.mode not in ("L", "RGB", "CMYK"):
            image = convert_mode(image, "RGB")
        if self.format == "png" and self.options.get("compress_level") == 1:
            return encode_png_fast(image)
        buffer = io.BytesIO()
        image.save(buffer, IMAGE_FORMATS[self.format], **self.options)
        return buffer.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}
_PNG_COLOR_TYPE_BY_BANDS = {1: 0, 2: 4, 3: 2, 4: 6}
_PNG_FILTER_UP = 2


def encode_png_fast(image: Image.Image) -> bytes:
    """PNG at the fastest real compression (see the module docstring), pixels unchanged."""
    simple = image.mode in _PNG_COLOR_TYPES and not (
        image.info.get("icc_profile") or "transparency" in image.info
    )
    if fast_deflate is None or not simple:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
        return buffer.getvalue()
    return png_up_isal(np.asarray(image))


def png_up_isal(pixels: np.ndarray) -> bytes:
    """8-bit (H, W) or (H, W, bands) pixels as PNG: Up filter on every row, ISA-L level 1."""
    assert fast_deflate is not None, "needs the fast-png extra (isal)"
    height, width = pixels.shape[:2]
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = _PNG_FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE_BY_BANDS[bands], 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            *_png_chunk(b"IHDR", header),
            *_png_chunk(b"IDAT", fast_deflate.compress(filtered, 1)),
            *_png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)


def _encode_class(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EncodeError(f"a class label must be an integer or a string, got {value!r}")
    return str(value).encode("utf-8")
