"""Image decoding and pixel arithmetic, with the safety checks an untrusted shard needs.

Decoding goes through Pillow restricted to the one format the member's extension names, so a
`.jpg` member cannot route bytes into an exotic decoder; the pixel count is checked from the
header before any pixel is decoded (a 17 kB PNG can declare 400 Mpx); EXIF orientation is
applied; JPEGs that will be shrunk are decoded at reduced size by libjpeg's DCT scaling;
damage Pillow would decode into garbage (PNG chunk CRCs, libjpeg's warnings) fails the
sample (see image_integrity). When every later step of the recipe takes numpy pixels (the
seed recipe: normalize, encode), a JPEG is decoded by simplejpeg straight into a buffer that
the thread (or worker process) reuses for its next sample, after the same header checks:
no Pillow image, no copy, no fresh multi-megabyte mapping per sample.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import image_integrity
from .image_integrity import simplejpeg

Size = tuple[int, int]
DraftPlanner = Callable[[Size], Size | None]  # oriented source size -> smallest useful size



@dataclass(frozen=True)
class ImageFormat:
    """One image format, everywhere it matters: the name a recipe writes (`format: jpg`), the
    member extensions that name it, Pillow's name for it (decoding is restricted to it), and
    the encoder's default options (what a recipe may set, and what the recipe hash covers)."""

    name: str
    pillow: str
    extensions: tuple[str, ...]
    options: dict[str, Any]


# The one table of image formats; decoding, encoding and the recipe checks all read it.
IMAGE_FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("png", "PNG", ("png",), {"compress_level": 1}),
        ImageFormat("jpg", "JPEG", ("jpg", "jpeg"), {"quality": 90}),
        ImageFormat("webp", "WEBP", ("webp",), {"quality": 90, "lossless": False, "method": 4}),
    )
}
# Member extension (the last part: `seg.png` -> png) -> format.
BY_EXTENSION: dict[str, ImageFormat] = {
    extension: f for f in IMAGE_FORMATS.values() for extension in f.extensions
}
PIL_FORMATS = {extension: f.pillow for extension, f in BY_EXTENSION.items()}
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


def rely_on_own_pixel_limit() -> None:
    """Turn off Pillow's process-wide bomb check (a warning above 89 Mpx, an error above 179):
    `decode_image` checks every header against the configured limit before decoding, and
    reports the declared size, which Pillow's error does not."""
    Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(Exception):
    """The member is not a usable image; the message says why in one line."""


# Pixels decoded straight into numpy: (height, width, 3) uint8 for RGB, (height, width) for L.
Pixels = np.ndarray
# Modes a JPEG decodes to directly as pixels: (Pillow's mode from the header, mode wanted).
# Gray to RGB is libjpeg's replication of the one band, as Pillow's convert does; RGB to L
# is not here (libjpeg's would be the Y band, Pillow's convert a different weighting).
_DIRECT_JPEG = {("RGB", "RGB"): "RGB", ("L", "L"): "GRAY", ("L", "RGB"): "RGB"}
_SCRATCH_LIMIT = 64 << 20  # a buffer above this is not kept between samples


class Scratch(threading.local):
    """Per-thread buffers reused from one sample to the next: a fresh multi-megabyte array
    per image is a fresh mapping from the kernel (page faults, system time) each time.
    Whoever takes a buffer must be done with it before the same thread takes it again."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, size: int) -> np.ndarray:
        """A 1-D uint8 buffer of `size` bytes (its contents are whatever was there)."""
        if size > _SCRATCH_LIMIT:
            return np.empty(size, np.uint8)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[name] = np.empty(size, np.uint8)
        return buffer[:size]


def decode_image(
    data: bytes, extension: str, *, max_pixels: int, draft: DraftPlanner | None = None
) -> Image.Image:
    """Decode `data` as the format its extension names, upright, within `max_pixels`."""
    image = decode_image_or_pixels(data, extension, max_pixels=max_pixels, draft=draft)
    assert isinstance(image, Image.Image)
    return image


def decode_image_or_pixels(
    data: bytes,
    extension: str,
    *,
    max_pixels: int,
    draft: DraftPlanner | None = None,
    pixels: tuple[str | None, Scratch] | None = None,
) -> Image.Image | Pixels:
    """decode_image; with `pixels` = (mode wanted or None for the image's own, scratch
    buffers), a JPEG that libjpeg can decode straight to that mode is returned as a numpy
    array in a reused buffer (see decode_jpeg_pixels), at reduced size if `draft` asks for it
    (then as SizedPixels); anything else is a Pillow image.
    """
    pil_format = PIL_FORMATS.get(extension.rsplit(".", 1)[-1])
    if pil_format is None:
        raise ImageDecodeError(f"cannot decode .{extension} as an image (jpg, png, webp)")
    try:
        image = Image.open(io.BytesIO(data), formats=[pil_format])
    except Image.DecompressionBombError as exc:  # Pillow's own, coarser limit fired first
        raise ImageDecodeError(
            f".{extension} image is above the limit of {max_pixels / 1e6:g} Mpx (--max-mpx): {exc}"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f".{extension} member is not a valid {pil_format} image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(
            f".{extension} member has a bad {pil_format} header: {exc}"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f".{extension} image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f".{extension} image declares {width}x{height} = {width * height / 1e6:.1f} Mpx, "
            f"above the limit of {max_pixels / 1e6:g} Mpx (--max-mpx)"
        )
    orientation = _orientation(image)
    # simplejpeg decodes (and checks, strictly) in one pass what Pillow + image_integrity
    # decode twice; an ICC profile stays on the Pillow path, whose PNG writer keeps it.
    direct = (
        simplejpeg is not None and pil_format == "JPEG" and not image.info.get("icc_profile")
    )
    if draft is not None and pil_format == "JPEG":
        swapped = orientation in _SWAPS_AXES
        wanted = draft((height, width) if swapped else (width, height))
        if wanted is not None:
            request = (wanted[1], wanted[0]) if swapped else wanted
            image.draft(image.mode, request)  # sets the reduced size; decodes nothing yet
            # The resize computes its target from this, not from the drafted size: libjpeg
            # rounds scaled sides up, which would move the target by a pixel on some images.
            image.info[SOURCE_SIZE] = (height, width) if swapped else (width, height)
            if direct and image.mode in ("RGB", "L"):
                return _drafted_by_simplejpeg(
                    data, extension, image, (width, height), orientation, pixels
                )
    elif pixels is not None and direct:
        mode_wanted = pixels[0] or image.mode
        colorspace = _DIRECT_JPEG.get((image.mode, mode_wanted))
        if colorspace is not None:
            return decode_jpeg_pixels(
                data, extension, image.size, colorspace, orientation, pixels[1]
            )
    try:
        if pil_format == "PNG":
            image_integrity.check_png(data)
        elif pil_format == "JPEG":
            image_integrity.check_jpeg(data)
        image.load()
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... on bad data
        raise ImageDecodeError(f".{extension} image data is corrupt: {exc}") from None
    if isinstance(orientation, int) and 2 <= orientation <= 8:
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _drafted_by_simplejpeg(
    data: bytes,
    extension: str,
    image: Image.Image,
    stored: Size,
    orientation: object,
    wanted: tuple[str | None, Scratch] | None,
) -> Image.Image | Pixels:
    """The JPEG at the reduced size Pillow's draft chose (1/2, 1/4 or 1/8: libjpeg's scaled
    IDCT, the same pixels as Pillow's), decoded by simplejpeg, upright, as a Pillow image
    carrying the header's info but the EXIF (whose orientation is applied); with `wanted`
    (mode, scratch) that libjpeg decodes to directly, as SizedPixels in the scratch buffer."""
    width, height = stored
    factor = next(f for f in (8, 4, 2, 1) if (-(-width // f), -(-height // f)) == image.size)
    colorspace = "RGB" if image.mode == "RGB" else "GRAY"
    if wanted is not None:
        direct = _DIRECT_JPEG.get((image.mode, wanted[0] or image.mode))
        if direct is not None:
            decoded = decode_jpeg_pixels(
                data, extension, image.size, direct, orientation, wanted[1], factor=factor
            )
            sized = decoded.view(SizedPixels)
            sized.source_size = image.info[SOURCE_SIZE]
            return sized
    pixels = decode_jpeg_pixels(
        data, extension, image.size, colorspace, orientation, None, factor=factor
    )
    result = Image.fromarray(pixels, image.mode)
    result.info = {k: v for k, v in image.info.items() if k not in _EXIF_KEYS}
    return result


_EXIF_KEYS = ("exif", "xmp", "XML:com.adobe.xmp")  # orientation lives there


def decode_jpeg_pixels(
    data: bytes,
    extension: str,
    size: Size,
    colorspace: str,
    orientation: object,
    scratch: Scratch | None,
    *,
    factor: int = 1,
) -> Pixels:
    """A JPEG decoded by simplejpeg (libjpeg-turbo, as Pillow's wheels bundle, with the same
    accurate DCT and smooth upsampling: the same pixels) into a reused buffer, upright.

    The header was read and checked by Pillow (format, size limit, EXIF orientation), so the
    errors and limits are those of the Pillow path. libjpeg's warnings are errors here
    (strict), which makes image_integrity's second, reduced-scale decode unnecessary: a
    damaged stream fails with the same message.
    """
    width, height = size  # after scaling by 1/factor
    bands = 3 if colorspace == "RGB" else 1
    buffer = None if scratch is None else scratch.take("decode", width * height * bands)
    scaling = {"min_width": width, "min_height": height, "min_factor": factor} if factor > 1 else {}
    try:
        decoded = simplejpeg.decode_jpeg(
            data, colorspace=colorspace, buffer=buffer, strict=True, **scaling
        )
    except ValueError as exc:
        raise ImageDecodeError(
            f".{extension} image data is corrupt: decoder warning: {' '.join(str(exc).split())}"
        ) from None
    if decoded.shape[:2] != (height, width):  # pragma: no cover - Pillow read the same header
        raise ImageDecodeError(f".{extension} image decoded to an unexpected size")
    if bands == 1:
        decoded = decoded.reshape(height, width)
    if isinstance(orientation, int) and 2 <= orientation <= 8:
        decoded = np.ascontiguousarray(_ORIENT[orientation](decoded))
    return decoded


# EXIF orientation as numpy views, each equal to the Pillow transpose that
# ImageOps.exif_transpose applies for it (checked against Pillow in the tests).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.swapaxes(0, 1),  # TRANSPOSE
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],  # ROTATE_270
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # TRANSVERSE
    8: lambda a: a.swapaxes(0, 1)[::-1],  # ROTATE_90
}


def pixels_mode(pixels: Pixels) -> str:
    """The Pillow mode of decoded pixels."""
    return "L" if pixels.ndim == 2 else "RGB"


SOURCE_SIZE = "shardflow.source_size"  # image.info key: the upright size before drafting


class SizedPixels(np.ndarray):
    """Pixels decoded at reduced size that know the image's upright size as stored (what a
    resize computes its target from), as a drafted Pillow image keeps it in its info."""

    source_size: Size


def source_size(image: Image.Image | Pixels) -> Size:
    """The image's upright size as stored in its file, before any reduced-size decoding."""
    if isinstance(image, np.ndarray):
        return getattr(image, "source_size", None) or (image.shape[1], image.shape[0])
    return image.info.get(SOURCE_SIZE, image.size)


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image.convert(mode)`, high bit depths scaled to 8 bits first.

    Pillow opens a 16-bit grayscale PNG as "I;16" (older versions: "I") and its convert()
    clips every level above 255, so a 16-bit image would become all white (and, normalised,
    all black). 16-bit RGB and RGBA PNGs are already reduced to their high bytes by Pillow;
    16-bit grayscale gets the same treatment here.
    """
    image = to_8_bits(image)
    return image if image.mode == mode else image.convert(mode)


_HIGH_DEPTH_GRAY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as 8-bit "L" (the high byte of each level, as Pillow does
    for 16-bit RGB); any other image as it is."""
    if image.mode not in _HIGH_DEPTH_GRAY:
        return image
    levels = np.asarray(image)
    if image.mode == "I":  # 32-bit container of 16-bit levels
        levels = np.clip(levels, 0, 0xFFFF)
    reduced = Image.fromarray((levels >> 8).astype(np.uint8))
    reduced.info = {k: v for k, v in image.info.items() if k != "transparency"}
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        reduced.info["transparency"] = transparent >> 8
    return reduced


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a broken EXIF block must not fail an otherwise good image
        return None


def resized_size(
    size: Size, *, shorter: int | None, longer: int | None, exact: Size | None
) -> Size:
    """The target size of a resize step, keeping the aspect ratio unless `exact` is given."""
    width, height = size
    if exact is not None:
        return exact
    if shorter is not None:
        scale = shorter / min(width, height)
    elif longer is not None:
        scale = longer / max(width, height)
    else:  # pragma: no cover - the recipe validator guarantees one of them
        raise ValueError("resize needs shorter, longer or width and height")
    return max(1, round(width * scale)), max(1, round(height * scale))


def minmax_lut(low: int, high: int) -> list[int]:
    """The 8-bit lookup table equal to the docs recipe's float min-max normalisation.

    The docs recipe computes, in float32, x = v / 255; x -= min(x); x /= max(x); then the
    webdataset encoder stores uint8(x * 255.0), truncating. Each output level depends only on
    the input level and the image's min and max, so computing that exact expression on the
    256 possible levels and applying it as a table gives the same pixels at a fraction of the
    cost. A constant image maps to 0 (the docs recipe divides by zero and writes NaN).
    """
    if high <= low:
        return [0] * 256
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    shifted = levels - levels[low]
    scaled = shifted / shifted[high]
    table = np.clip(scaled, 0.0, 1.0) * np.float32(255.0)
    return table.astype(np.uint8).tolist()


def normalize_minmax(image: Image.Image | Pixels) -> Image.Image | Pixels:
    """Per-image min-max normalisation over all bands, on 8-bit L or RGB images.

    On decoded pixels (numpy), min and max are numpy reductions and the table is Pillow's
    `point` over the same memory seen as one 8-bit band. On a Pillow image, the extrema come
    from Pillow's histogram, which runs without the GIL (getextrema and numpy's view of the
    pixels, a tobytes copy, both hold it), and the table is Pillow's `point`. Most photos
    already span 0..255, where the docs arithmetic maps every level to itself: the table is
    then the identity and the image is returned as is, saving the lookup pass.
    """
    if isinstance(image, np.ndarray):
        table = minmax_lut(int(image.min()), int(image.max()))
        if table == _IDENTITY:
            return image
        # Pillow's `point` on an 8-bit view of the same memory (no copy in): numpy's take
        # first widens every index to 64 bits, which costs several times more.
        height = image.shape[0]
        view = Image.frombuffer("L", (image.size // height, height), image, "raw", "L", 0, 1)
        return np.asarray(view.point(table)).reshape(image.shape)
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"normalize needs an L or RGB image, got mode {image.mode}; add convert")
    counts = np.asarray(image.histogram()).reshape(-1, 256).sum(axis=0)
    present = np.flatnonzero(counts)
    table = minmax_lut(int(present[0]), int(present[-1]))
    if table == _IDENTITY:
        return image
    return image.point(table * len(image.getbands()))


_IDENTITY = list(range(256))
