"""Turning field values back into member bytes.

Each output member names its format (inferred from the extension when obvious). Defaults
favour speed where the cost is large and the size gain small.

PNG at `compress_level` 1 (the default) is where the time goes, so it has fast paths, chosen
by the member's `encoder` option (`auto` by default: the fastest installed):
- `fpng` (the `fpng` extra): the fastest encoder packaged. Its binding holds the GIL and
  returns an empty or partial result instead of raising, so every PNG it writes is checked
  (signature, header, every chunk's length and CRC) before anything uses it; `auto` then
  falls back to the next encoder, a pinned `fpng` fails the sample. RGB and RGBA only.
- `isal` (the `fast-png` extra): PNG's Up filter on every row (one vectorised subtraction into
  a reused buffer) deflated by ISA-L at level 1; releases the GIL; written as three pieces
  (header, ISA-L's output, trailer) that the tar writer writes without joining them.
- `pillow`: Pillow at level 1 with zlib's Z_RLE strategy (Pillow tries four filters on every
  row whatever the level, and exposes no filter option; Z_RLE is faster and smaller there).
Images that need what only Pillow writes (an ICC profile, a transparency key, modes other
than 8-bit L, LA, RGB, RGBA) and other levels go to Pillow. All are lossless: the pixels are
the same whichever encoder ran, the bytes are not, so the manifest records the encoder and
its version. benchmarks/README.md has the measurements.
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

from .images import BY_EXTENSION, IMAGE_FORMATS, Pixels, Scratch, convert_mode, pixels_mode
from .tar_writer import Pieces

try:  # the `fast-png` extra
    from isal import isal_zlib as fast_deflate
except ImportError:  # pragma: no cover - depends on the installed extras
    fast_deflate = None  # type: ignore[assignment]

try:  # the `fpng` extra
    import fpng
except ImportError:  # pragma: no cover - depends on the installed extras
    fpng = None

FORMATS = (*IMAGE_FORMATS, "cls", "json", "txt", "raw")
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    name: f.options for name, f in IMAGE_FORMATS.items()
}


# `png: {encoder: ...}`: which library writes PNG at compress_level 1. Absent (or "auto"):
# the fastest installed. Pinning one gives the same bytes on every install that has it.
PNG_ENCODERS = ("auto", "fpng", "isal", "pillow")
_PNG_ENCODER_DISTRIBUTIONS = {"fpng": "fpng", "isal": "isal", "pillow": "pillow"}


class EncodeError(Exception):
    """A field value cannot be written in the asked format."""


def png_encoder_installed(name: str) -> bool:
    return {"fpng": fpng, "isal": fast_deflate}.get(name, True) is not None


def resolve_png_encoder(name: str, *, fpng_too: bool = True) -> str:
    """The encoder `name` stands for: itself, or for "auto" the fastest installed."""
    if name != "auto":
        return name
    if fpng_too and fpng is not None:
        return "fpng"
    return "isal" if fast_deflate is not None else "pillow"


def png_encoder_record(name: str) -> dict[str, str | None]:
    """What the manifest records about a PNG encoder: which one, and its version."""
    from importlib import metadata

    chosen = resolve_png_encoder(name)
    try:
        version = metadata.version(_PNG_ENCODER_DISTRIBUTIONS[chosen])
    except metadata.PackageNotFoundError:  # pragma: no cover - imported, so installed
        version = None
    return {"encoder": chosen, "version": version}


def canonical_format(name: str) -> str:
    """A format as recipes may spell it (`jpeg`) -> its name in FORMATS (`jpg`)."""
    image = BY_EXTENSION.get(name)
    return image.name if image is not None else name


def infer_format(extension: str) -> str | None:
    """The format an output extension implies (`seg.png` -> png), or None if it implies none."""
    last = canonical_format(extension.rsplit(".", 1)[-1].lower())
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

    def encode(self, value: Any) -> bytes | Pieces:
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

    def _encode_image(self, value: Any) -> bytes | Pieces:
        if isinstance(value, bytes | bytearray):
            raise EncodeError(
                f"field {self.source!r} holds undecoded bytes; decode it with an image step "
                f"before writing {self.format}"
            )
        level = self.options.get("compress_level")
        encoder = self.options.get("encoder", "auto")
        if isinstance(value, np.ndarray):
            if self.format == "png" and level == 1:
                return encode_png_fast(value, encoder)
            value = Image.fromarray(value, pixels_mode(value))
        if not isinstance(value, Image.Image):
            raise EncodeError(f"field {self.source!r} is a {type(value).__name__}, not an image")
        image = value
        if self.format == "jpg" and image.mode not in ("L", "RGB", "CMYK"):
            image = convert_mode(image, "RGB")
        if self.format == "png" and level == 1:
            return encode_png_fast(image, encoder)
        options = {k: v for k, v in self.options.items() if k != "encoder"}
        buffer = io.BytesIO()
        image.save(buffer, IMAGE_FORMATS[self.format].pillow, **options)
        return buffer.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}
_PNG_COLOR_TYPE_BY_BANDS = {1: 0, 2: 4, 3: 2, 4: 6}
_PNG_FILTER_UP = 2
_SCRATCH = Scratch()  # the Up-filtered rows: one buffer per thread, reused


def encode_png_fast(image: Image.Image | Pixels, encoder: str = "auto") -> bytes | Pieces:
    """PNG at the fastest real compression (see the module docstring), pixels unchanged."""
    if isinstance(image, np.ndarray):
        pixels = image
    else:
        simple = image.mode in _PNG_COLOR_TYPES and not (
            image.info.get("icc_profile") or "transparency" in image.info
        )
        if not simple or resolve_png_encoder(encoder) == "pillow":
            return _pillow_png(image, 1)
        pixels = np.asarray(image)
    chosen = resolve_png_encoder(encoder)
    if chosen == "fpng":
        if pixels.ndim == 3 and pixels.shape[2] in (3, 4):  # fpng writes RGB and RGBA only
            png = fpng_checked(pixels)
            if png is not None:
                return png
            if encoder == "fpng":
                raise EncodeError("fpng failed to encode the image (its output did not check)")
        chosen = resolve_png_encoder("auto", fpng_too=False)
    if chosen == "pillow":
        return _pillow_png(Image.fromarray(pixels), 1)
    return png_up_isal(pixels)


def _pillow_png(image: Image.Image, level: int) -> bytes:
    """Pillow's PNG; at level 1 with zlib's Z_RLE strategy (faster and smaller there)."""
    options: dict[str, Any] = {"compress_level": level}
    if level == 1:
        options["compress_type"] = zlib.Z_RLE
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def png_up_isal(pixels: Pixels) -> Pieces:
    """8-bit (H, W) or (H, W, bands) pixels as PNG: Up filter on every row, ISA-L level 1.

    The filtered rows go into this thread's reused buffer; the PNG is three pieces (header,
    ISA-L's output, trailer) that the tar writer writes one after another."""
    assert fast_deflate is not None, "needs the fast-png extra (isal)"
    height, width = pixels.shape[:2]
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, -1)
    stride = rows.shape[1] + 1
    filtered = _SCRATCH.take("png-up", height * stride).reshape(height, stride)
    filtered[:, 0] = _PNG_FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    compressed = fast_deflate.compress(filtered, 1)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE_BY_BANDS[bands], 0, 0, 0)
    head = b"".join(
        [_PNG_SIGNATURE, *_png_chunk(b"IHDR", header), struct.pack(">I", len(compressed)), b"IDAT"]
    )
    crc = fast_deflate.crc32(compressed, fast_deflate.crc32(b"IDAT"))
    tail = struct.pack(">I", crc) + b"".join(_png_chunk(b"IEND", b""))
    return Pieces(head, compressed, tail)


def _png_chunk(kind: bytes, data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    crc = _crc32(data, _crc32(kind))
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)


def fpng_checked(pixels: Pixels) -> bytes | None:
    """fpng's PNG of 8-bit RGB or RGBA pixels, or None when it is not a well-formed PNG of
    those pixels' size and type: fpng's binding returns an empty or partial result instead of
    raising, so every output is checked (signature, IHDR, every chunk's length and CRC, IEND
    last) before anything can write it."""
    assert fpng is not None, "needs the fpng extra"
    png = fpng.from_ndarray(np.ascontiguousarray(pixels))
    height, width, bands = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE_BY_BANDS[bands], 0, 0, 0)
    return png if _well_formed_png(png, header) else None


def _well_formed_png(png: bytes, header: bytes) -> bool:
    view = memoryview(png)
    if bytes(view[:8]) != _PNG_SIGNATURE:
        return False
    offset, kinds = 8, list[bytes]()
    while offset + 12 <= len(png):
        (length,) = struct.unpack_from(">I", png, offset)
        end = offset + 8 + length
        if end + 4 > len(png):
            return False
        (crc,) = struct.unpack_from(">I", png, end)
        if _crc32(view[offset + 8 : end], _crc32(view[offset + 4 : offset + 8])) != crc:
            return False
        kind = bytes(view[offset + 4 : offset + 8])
        if not kinds and (kind != b"IHDR" or bytes(view[offset + 8 : end]) != header):
            return False
        kinds.append(kind)
        offset = end + 4
    return offset == len(png) and kinds[-1:] == [b"IEND"] and b"IDAT" in kinds


def _crc32(data: bytes | memoryview, value: int = 0) -> int:
    return (fast_deflate or zlib).crc32(data, value)


def _encode_class(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EncodeError(f"a class label must be an integer or a string, got {value!r}")
    return str(value).encode("utf-8")
