"""Damage that Pillow decodes into garbage without a word, caught before the pixels are used.

- PNG: every chunk carries a CRC, but Pillow checks only the header chunks while decoding and
  skips the CRCs of the image data (IDAT), so a flipped byte there decodes into wrong pixels
  (zlib's own checksum sits after the last row and is never reached). Pillow's `verify()`
  checks every chunk's CRC; it is run first, on its own parse of the member.
- JPEG: libjpeg reports a stream damaged mid-way ("Corrupt JPEG data: premature end of data
  segment", "bad Huffman code", extraneous bytes, a missing restart marker) as warnings and
  fills in what it could not decode; Pillow silences those warnings. With the `strict-jpeg`
  extra (simplejpeg, libjpeg-turbo with warnings raised as errors) the entropy-coded data is
  decoded once more, at 1/8 scale to keep the extra cost small, and any warning fails the
  sample. Without the extra such a JPEG is decoded as Pillow decodes it. A flipped bit that
  leaves the stream well-formed is undetectable: JPEG carries no checksum.
"""

from __future__ import annotations

import io

from PIL import Image

try:  # the `strict-jpeg` extra
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the installed extras
    simplejpeg = None

_CMYK_SPACES = {"CMYK", "YCCK"}  # libjpeg-turbo converts these only to CMYK
_CHECK_SCALE = 8  # the entropy-coded data is all read at any scale; 1/8 skips most IDCT work


class ImageDamaged(Exception):
    """The member's data is damaged; the message says how, in one line."""


def check_png(data: bytes) -> None:
    """Raise ImageDamaged unless every chunk's CRC matches (the image data's included)."""
    try:
        Image.open(io.BytesIO(data), formats=["PNG"]).verify()
    except Exception as exc:  # Pillow raises SyntaxError, OSError, struct.error...
        raise ImageDamaged(f"checksum error: {exc}") from None


def check_jpeg(data: bytes) -> None:
    """Raise ImageDamaged if libjpeg warns while decoding (nothing without the extra)."""
    if simplejpeg is None:
        return
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        target = "CMYK" if colorspace in _CMYK_SPACES else "GRAY"
        simplejpeg.decode_jpeg(data, colorspace=target, min_factor=_CHECK_SCALE, strict=True)
    except ValueError as exc:
        raise ImageDamaged(f"decoder warning: {' '.join(str(exc).split())}") from None
