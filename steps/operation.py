"""What every recipe operation is built on: the sample, its context, the base class.

A sample is a dict: `__key__` and one field per member, named by extension (`jpg`, `json`,
`seg.png`) and holding bytes until an operation decodes it. Each operation reads and writes
fields; `encode`, always last, chooses the output members. An operation drops a sample by
raising `Dropped` and fails it by raising `SampleError`; operations never touch tar files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from .errors import SampleError
from .params import Params

if TYPE_CHECKING:
    from .plugins import Plugin

Sample = dict[str, Any]
MODES = ("RGB", "RGBA", "L", "LA", "CMYK", "P", "1")  # Pillow modes an image step may ask for
# The largest image side a recipe may ask for: JPEG's limit, far above any training size.
# A recipe is untrusted input: `resize: {width: 10000000, height: 10000000}` must not reach
# Pillow's allocator.
MAX_SIDE = 65535


class Dropped(Exception):
    """The sample is deliberately left out (a filter, a plugin returning None)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class SampleContext:
    """What an operation may know about the sample beyond its fields."""

    key: str
    seed: int
    max_pixels: int
    _rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        """A generator seeded from (recipe seed, sample key): the same draws on every run,
        whatever the thread or the order in which samples are processed."""
        if self._rng is None:
            digest = hashlib.sha256(self.key.encode("utf-8", "surrogateescape")).digest()
            words = np.frombuffer(digest, dtype=np.uint32).tolist()
            self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, *words]))
        return self._rng


class Operation:
    """Base class: parse parameters once, then apply to many samples (from many threads)."""

    name: ClassVar[str]
    accepted: ClassVar[tuple[str, ...]] = ()
    # Whether this operation takes decoded numpy pixels (images.Pixels) in an image field, or
    # never touches image fields: then an image step before it may decode to numpy.
    takes_pixels: ClassVar[bool] = False

    @classmethod
    def parse(cls, p: Params) -> Operation:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Every parameter, defaults included: this is what the recipe hash covers."""
        raise NotImplementedError

    def reads(self) -> set[str] | None:
        """Input members this operation may read; None means any member."""
        return set()

    def plugins(self) -> Sequence[Plugin]:
        """The user functions this operation calls: the pipeline resolves them (and refuses
        a module not allowed) before the first sample."""
        return ()

    def plan(self, following: Sequence[Operation]) -> None:
        """Called once before the first sample with the operations after this one: an
        operation that can do less work knowing what comes next (fuse with it) sets itself up
        here. Parameters and the recipe hash must not change."""

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        raise NotImplementedError

    def implementation(self) -> dict[str, str] | None:
        """For the manifest, after plan(): the library this operation's pixels depend on
        when installs may differ (which one, its version), or None."""
        return None


def field_value(sample: Sample, name: str, ctx: SampleContext, what: str) -> Any:
    """The field `name`, or a SampleError saying which operation needed it."""
    if name not in sample:
        raise SampleError(ctx.key, f"no {name!r} field for {what}")
    return sample[name]


def check_output_size(size: tuple[int, int], ctx: SampleContext, what: str) -> None:
    """Fail the sample before allocating an image above --max-mpx.

    The decoder's limit bounds the input only: a 65535x1 PNG of a few hundred bytes passes it,
    and `resize: {shorter: 256}` would then allocate a 16776960x256 image (about 13 GB)."""
    width, height = size
    if width * height > ctx.max_pixels:
        raise SampleError(
            ctx.key,
            f"{what}: the output would be {width}x{height} = {width * height / 1e6:.1f} Mpx, "
            f"above the limit of {ctx.max_pixels / 1e6:g} Mpx (--max-mpx)",
        )


def image_field(
    sample: Sample, name: str, ctx: SampleContext, what: str, *, pixels: bool = False
) -> Any:
    """The decoded image in field `name` (a Pillow image; or, for an operation that takes
    them, numpy pixels: `pixels=True`); undecoded bytes are a recipe mistake, said so."""
    value = field_value(sample, name, ctx, what)
    if not (isinstance(value, Image.Image) or (pixels and isinstance(value, np.ndarray))):
        raise SampleError(ctx.key, f"{what} needs a decoded image in {name!r}; add an image step")
    return value


def side_param(p: Params, name: str) -> int:
    """A required image side in pixels, 1..MAX_SIDE."""
    return p.int(name, minimum=1, maximum=MAX_SIDE)


def size_params(p: Params) -> tuple[int, int]:
    """`size: N` or `width: W, height: H`, as crops take them."""
    if p.has("size"):
        if p.has("width") or p.has("height"):
            raise p.error("give size, or width and height, not both")
        size = p.int("size", minimum=1, maximum=MAX_SIDE)
        return size, size
    if p.has("width") and p.has("height"):
        return side_param(p, "width"), side_param(p, "height")
    raise p.error("needs size, or width and height")
