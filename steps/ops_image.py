"""Pixel operations: convert, resize, crops, flip, min-max normalisation.

Random operations draw from the sample's own generator (seeded by recipe seed and key), so a
run is reproducible whatever the threads do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from . import images, resample_area
from .errors import SampleError
from .operation import (
    MAX_SIDE,
    MODES,
    Operation,
    Sample,
    SampleContext,
    check_output_size,
    image_field,
    side_param,
    size_params,
)
from .params import Params

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    # Exact area averaging is resample_area's; where it does not apply, Pillow's box stands
    # in (modes other than 8-bit L, LA, RGB, RGBA), or bilinear when enlarging (_filter).
    "area": Image.Resampling.BOX,
}
_AREA_MODES = ("L", "LA", "RGB", "RGBA")


@dataclass
class Convert(Operation):
    """Convert an image to a Pillow mode (RGB, L, ...)."""

    name: ClassVar[str] = "convert"
    accepted: ClassVar[tuple[str, ...]] = ("mode", "field")
    mode: str = "RGB"
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> Convert:
        return cls(p.str("mode", "RGB", choices=MODES), p.str("field", "image"))

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "field": self.field_name}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = image_field(sample, self.field_name, ctx, "convert")
        if image.mode != self.mode:
            sample[self.field_name] = images.convert_mode(image, self.mode)
        return sample


@dataclass
class Resize(Operation):
    """Resize by the shorter side, the longer side (ratio kept) or to an exact size.

    `resample`: one of Pillow's filters, or `area`: exact area averaging when shrinking (each
    output pixel the mean of the source over its footprint, as OpenCV's INTER_AREA; see
    resample_area), bilinear when enlarging."""

    name: ClassVar[str] = "resize"
    accepted: ClassVar[tuple[str, ...]] = (
        "shorter",
        "longer",
        "width",
        "height",
        "upscale",
        "resample",
        "field",
    )
    shorter: int | None = None
    longer: int | None = None
    exact: tuple[int, int] | None = None
    upscale: bool = True
    resample: str = "bicubic"
    field_name: str = "image"
    # Set by plan() when a center crop follows: resize only the region the crop keeps.
    crop: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    # Set by plan() for `area`: the implementation that runs (resample_area.RESIZERS).
    resizer: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, p: Params) -> Resize:
        shorter = p.optional_int("shorter", minimum=1, maximum=MAX_SIDE)
        longer = p.optional_int("longer", minimum=1, maximum=MAX_SIDE)
        exact = None
        if p.has("width") or p.has("height"):
            exact = (side_param(p, "width"), side_param(p, "height"))
        if sum(x is not None for x in (shorter, longer, exact)) != 1:
            raise p.error("needs exactly one of: shorter, longer, or width and height")
        return cls(
            shorter,
            longer,
            exact,
            p.bool("upscale", True),
            p.str("resample", "bicubic", choices=tuple(_RESAMPLE)),
            p.str("field", "image"),
        )

    def params(self) -> dict[str, Any]:
        size = {"width": self.exact[0], "height": self.exact[1]} if self.exact else {}
        return {
            "shorter": self.shorter,
            "longer": self.longer,
            **size,
            "upscale": self.upscale,
            "resample": self.resample,
            "field": self.field_name,
        }

    def target(self, size: images.Size) -> images.Size:
        target = images.resized_size(
            size, shorter=self.shorter, longer=self.longer, exact=self.exact
        )
        if not self.upscale and (target[0] > size[0] or target[1] > size[1]):
            return size
        return target

    def plan(self, following: Sequence[Operation]) -> None:
        """A center crop of the same field right after: resample only the region it keeps
        (the crop then cuts nothing)."""
        crop = following[0] if following else None
        if type(crop) is CenterCrop and crop.field_name == self.field_name:
            self.crop = (crop.width, crop.height)
        if self.resample == "area":
            self.resizer = resample_area.installed_resizer()

    def implementation(self) -> dict[str, str] | None:
        """For the manifest: which resizer `area` runs and its version (the bytes may differ
        by a level between them); None for Pillow's filters."""
        return None if self.resizer is None else resample_area.resizer_record(self.resizer)

    def takes_drafted_pixels(self) -> bool:
        """Whether a JPEG decoded at reduced size for this resize may come as numpy pixels
        (images.SizedPixels): `area` resizes them as they are, with no Pillow image between."""
        return self.resample == "area"

    def draft_target(self, size: images.Size) -> images.Size | None:
        """For JPEG DCT-scaled decoding: the size to decode at, when this resize shrinks."""
        target = self.target(size)
        return target if target[0] < size[0] and target[1] < size[1] else None

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = image_field(sample, self.field_name, ctx, "resize", pixels=True)
        source = images.source_size(image)
        target = self.target(source)
        if isinstance(image, np.ndarray):  # a JPEG decoded at reduced size for `area`
            height, width = image.shape[:2]
            if target[0] <= width and target[1] <= height and target != (width, height):
                sample[self.field_name] = self._area(image, target)
                return sample
            image = Image.fromarray(np.array(image), images.pixels_mode(image))
            image.info[images.SOURCE_SIZE] = source
        if target == source:  # nothing to resize (a JPEG is drafted only when it shrinks)
            target = image.size
        if self._area_applies(image, target):
            sample[self.field_name] = self._area(image, target)
        elif self.crop is not None and target[0] >= self.crop[0] and target[1] >= self.crop[1]:
            # Only the crop is allocated, whatever the size of the virtual resized image.
            sample[self.field_name] = self._resize_crop_region(image, target, self.crop)
        elif target != image.size:
            check_output_size(target, ctx, "resize")
            sample[self.field_name] = image.resize(target, self._filter(image, target))
        return sample

    def _filter(self, image: Image.Image, target: images.Size) -> Image.Resampling:
        """Pillow's filter; for `area` enlarging, bilinear (what OpenCV's INTER_AREA does)."""
        if self.resample == "area" and (target[0] > image.width or target[1] > image.height):
            return Image.Resampling.BILINEAR
        return _RESAMPLE[self.resample]

    def _area_applies(self, image: Image.Image, target: images.Size) -> bool:
        return (
            self.resample == "area"
            and image.mode in _AREA_MODES
            and target != image.size
            and target[0] <= image.width
            and target[1] <= image.height
        )

    def _area(self, image: Image.Image | images.Pixels, target: images.Size) -> Image.Image:
        """Exact area averaging, of only the region a center crop after keeps."""
        crop = self.crop
        if crop is not None and (target[0] < crop[0] or target[1] < crop[1]):
            crop = None  # the crop then fails the sample, with its own message
        resizer = self.resizer or resample_area.installed_resizer()
        if isinstance(image, np.ndarray):
            pixels, mode, info = image, images.pixels_mode(image), {}
        else:
            pixels, mode, info = np.asarray(image), image.mode, image.info
        result = Image.fromarray(
            resample_area.shrink(pixels, target, crop=crop, resizer=resizer), mode
        )
        result.info = dict(info)
        return result

    def _resize_crop_region(
        self, image: Image.Image, target: images.Size, crop: tuple[int, int]
    ) -> Image.Image:
        """Resize then center-crop in one pass, resampling only the source region the crop
        keeps (Pillow's `box`): for a 4:3 photo cut to a square, 40% less resampling, and the
        same pixels to within one level of rounding (the filter still reads past the box)."""
        left, top = (target[0] - crop[0]) // 2, (target[1] - crop[1]) // 2
        scale_x, scale_y = image.width / target[0], image.height / target[1]
        box = (
            left * scale_x,
            top * scale_y,
            (left + crop[0]) * scale_x,
            (top + crop[1]) * scale_y,
        )
        return image.resize(crop, self._filter(image, target), box=box)


@dataclass
class CenterCrop(Operation):
    """Cut the central width x height region; a smaller image fails the sample."""

    name: ClassVar[str] = "center_crop"
    accepted: ClassVar[tuple[str, ...]] = ("size", "width", "height", "field")
    width: int
    height: int
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> CenterCrop:
        return cls(*size_params(p), p.str("field", "image"))

    def params(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "field": self.field_name}

    def _box(self, left: int, top: int) -> tuple[int, int, int, int]:
        return (left, top, left + self.width, top + self.height)

    def _check(self, image: Image.Image, ctx: SampleContext) -> None:
        if image.width < self.width or image.height < self.height:
            raise SampleError(
                ctx.key,
                f"{self.name}: image {image.width}x{image.height} is smaller than the crop "
                f"{self.width}x{self.height}",
            )

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = image_field(sample, self.field_name, ctx, self.name)
        self._check(image, ctx)
        left = (image.width - self.width) // 2
        top = (image.height - self.height) // 2
        sample[self.field_name] = image.crop(self._box(left, top))
        return sample


@dataclass
class RandomCrop(CenterCrop):
    """Cut a width x height region at a position drawn from the sample's generator."""

    name: ClassVar[str] = "random_crop"

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = image_field(sample, self.field_name, ctx, self.name)
        self._check(image, ctx)
        left = int(ctx.rng.integers(0, image.width - self.width + 1))
        top = int(ctx.rng.integers(0, image.height - self.height + 1))
        sample[self.field_name] = image.crop(self._box(left, top))
        return sample


@dataclass
class HorizontalFlip(Operation):
    """Mirror the image left-right with probability p, drawn from the sample's generator."""

    name: ClassVar[str] = "hflip"
    accepted: ClassVar[tuple[str, ...]] = ("p", "field")
    p: float = 0.5
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> HorizontalFlip:
        return cls(p.float("p", 0.5, low=0.0, high=1.0), p.str("field", "image"))

    def params(self) -> dict[str, Any]:
        return {"p": self.p, "field": self.field_name}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = image_field(sample, self.field_name, ctx, "hflip")
        if ctx.rng.random() < self.p:
            sample[self.field_name] = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return sample


@dataclass
class Normalize(Operation):
    """Per-image min-max normalisation to the full 0..255 range (the docs recipe's [0, 1])."""

    name: ClassVar[str] = "normalize"
    accepted: ClassVar[tuple[str, ...]] = ("field",)
    takes_pixels: ClassVar[bool] = True
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> Normalize:
        return cls(p.str("field", "image"))

    def params(self) -> dict[str, Any]:
        return {"field": self.field_name}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = image_field(sample, self.field_name, ctx, "normalize", pixels=True)
        try:
            sample[self.field_name] = images.normalize_minmax(image)
        except ValueError as exc:
            raise SampleError(ctx.key, str(exc)) from None
        return sample
