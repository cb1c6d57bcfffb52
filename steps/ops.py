"""The operations a recipe is made of.

A sample is a dict: `__key__` and one field per member, named by extension (`jpg`, `json`,
`seg.png`) and holding bytes until an operation decodes it. Each operation reads and writes
fields; `encode`, always last, chooses the output members. An operation drops a sample by
raising `Dropped` and fails it by raising `SampleError`; nothing here touches the tar files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from . import images
from .encoders import DEFAULT_OPTIONS, FORMATS, EncodeError, MemberEncoder, infer_format
from .errors import SampleError
from .params import Params, RecipeError
from .plugins import Plugin

Sample = dict[str, Any]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_MODES = ("RGB", "RGBA", "L", "LA", "CMYK", "P", "1")


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

    @classmethod
    def parse(cls, p: Params) -> Operation:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Every parameter, defaults included: this is what the recipe hash covers."""
        raise NotImplementedError

    def reads(self) -> set[str] | None:
        """Input members this operation may read; None means any member."""
        return set()

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        raise NotImplementedError


def _field(sample: Sample, name: str, ctx: SampleContext, what: str) -> Any:
    if name not in sample:
        raise SampleError(ctx.key, f"no {name!r} field for {what}")
    return sample[name]


def _image(sample: Sample, name: str, ctx: SampleContext, what: str) -> Image.Image:
    value = _field(sample, name, ctx, what)
    if not isinstance(value, Image.Image):
        raise SampleError(ctx.key, f"{what} needs a decoded image in {name!r}; add an image step")
    return value


def _size_params(p: Params) -> tuple[int, int]:
    if p.has("size"):
        if p.has("width") or p.has("height"):
            raise p.error("give size, or width and height, not both")
        size = p.int("size", minimum=1)
        return size, size
    if p.has("width") and p.has("height"):
        return p.int("width", minimum=1), p.int("height", minimum=1)
    raise p.error("needs size, or width and height")


@dataclass
class DecodeImage(Operation):
    """Decode the first present of several image members (`jpg;png`) into one field."""

    name: ClassVar[str] = "image"
    accepted: ClassVar[tuple[str, ...]] = ("from", "to", "mode")
    sources: list[str]
    target: str = "image"
    mode: str | None = None
    draft: images.DraftPlanner | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, p: Params) -> DecodeImage:
        sources = [s.lower() for s in p.str_list("from", ["jpg", "png"])]
        for source in sources:
            if source.rsplit(".", 1)[-1] not in images.PIL_FORMATS:
                raise p.error(f"cannot decode {source!r}: images are read from jpg, png or webp")
        mode = p.str("mode", choices=_MODES) if p.has("mode") else None
        return cls(sources, p.str("to", "image"), mode)

    def params(self) -> dict[str, Any]:
        return {"from": ";".join(self.sources), "to": self.target, "mode": self.mode}

    def reads(self) -> set[str]:
        return set(self.sources)

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        for source in self.sources:
            data = sample.get(source)
            if data is None:
                continue
            if not isinstance(data, bytes):
                raise SampleError(ctx.key, f"field {source!r} was already decoded")
            try:
                image = images.decode_image(
                    data, source, max_pixels=ctx.max_pixels, draft=self.draft
                )
            except images.ImageDecodeError as exc:
                raise SampleError(ctx.key, str(exc)) from None
            if self.mode and image.mode != self.mode:
                image = image.convert(self.mode)
            del sample[source]
            sample[self.target] = image
            return sample
        wanted = " or ".join(self.sources)
        raise SampleError(ctx.key, f"no image: the sample has no {wanted} member")


@dataclass
class DecodeJson(Operation):
    """Parse a member as UTF-8 JSON (never anything executable)."""

    name: ClassVar[str] = "json"
    accepted: ClassVar[tuple[str, ...]] = ("from", "to")
    source: str = "json"
    target: str = "json"

    @classmethod
    def parse(cls, p: Params) -> DecodeJson:
        source = p.str("from", "json")
        return cls(source, p.str("to", source))

    def params(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target}

    def reads(self) -> set[str]:
        return {self.source}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        value = _field(sample, self.source, ctx, "json")
        sample.pop(self.source)
        sample[self.target] = parse_json(value, ctx.key, self.source)
        return sample


def parse_json(value: Any, key: str, name: str) -> Any:
    """The parsed JSON of a member, which may already have been parsed by an earlier step."""
    if not isinstance(value, bytes):
        return value
    try:
        return json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SampleError(key, f".{name} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise SampleError(key, f".{name} is not valid JSON: {exc}") from None


@dataclass
class Convert(Operation):
    """Convert an image to a Pillow mode (RGB, L, ...)."""

    name: ClassVar[str] = "convert"
    accepted: ClassVar[tuple[str, ...]] = ("mode", "field")
    mode: str = "RGB"
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> Convert:
        return cls(p.str("mode", "RGB", choices=_MODES), p.str("field", "image"))

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "field": self.field_name}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = _image(sample, self.field_name, ctx, "convert")
        if image.mode != self.mode:
            sample[self.field_name] = image.convert(self.mode)
        return sample


@dataclass
class Resize(Operation):
    """Resize by the shorter side, the longer side (ratio kept) or to an exact size."""

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

    @classmethod
    def parse(cls, p: Params) -> Resize:
        shorter = p.optional_int("shorter", minimum=1)
        longer = p.optional_int("longer", minimum=1)
        exact = None
        if p.has("width") or p.has("height"):
            exact = (p.int("width", minimum=1), p.int("height", minimum=1))
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

    def draft_target(self, size: images.Size) -> images.Size | None:
        """For JPEG DCT-scaled decoding: the size to decode at, when this resize shrinks."""
        target = self.target(size)
        return target if target[0] < size[0] and target[1] < size[1] else None

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = _image(sample, self.field_name, ctx, "resize")
        target = self.target(image.size)
        if target != image.size:
            sample[self.field_name] = image.resize(target, _RESAMPLE[self.resample])
        return sample


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
        return cls(*_size_params(p), p.str("field", "image"))

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
        image = _image(sample, self.field_name, ctx, self.name)
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
        image = _image(sample, self.field_name, ctx, self.name)
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
        image = _image(sample, self.field_name, ctx, "hflip")
        if ctx.rng.random() < self.p:
            sample[self.field_name] = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return sample


@dataclass
class Normalize(Operation):
    """Per-image min-max normalisation to the full 0..255 range (the docs recipe's [0, 1])."""

    name: ClassVar[str] = "normalize"
    accepted: ClassVar[tuple[str, ...]] = ("field",)
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> Normalize:
        return cls(p.str("field", "image"))

    def params(self) -> dict[str, Any]:
        return {"field": self.field_name}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        image = _image(sample, self.field_name, ctx, "normalize")
        try:
            sample[self.field_name] = images.normalize_minmax(image)
        except ValueError as exc:
            raise SampleError(ctx.key, str(exc)) from None
        return sample


@dataclass
class Label(Operation):
    """Take a class label from a JSON field (dotted path; list indices as numbers)."""

    name: ClassVar[str] = "label"
    accepted: ClassVar[tuple[str, ...]] = ("from", "path", "to", "classes")
    source: str = "json"
    path: str = "cls"
    target: str = "cls"
    classes: list[str] | None = None

    @classmethod
    def parse(cls, p: Params) -> Label:
        classes = p.str_list("classes") if p.has("classes") else None
        return cls(p.str("from", "json"), p.str("path", "cls"), p.str("to", "cls"), classes)

    def params(self) -> dict[str, Any]:
        return {"from": self.source, "path": self.path, "to": self.target, "classes": self.classes}

    def reads(self) -> set[str]:
        return {self.source}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        document = parse_json(_field(sample, self.source, ctx, "label"), ctx.key, self.source)
        sample[self.source] = document
        value = document
        for part in self.path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise SampleError(ctx.key, f".{self.source} has no field {self.path!r}")
        if self.classes is not None:
            if value not in self.classes:
                raise SampleError(ctx.key, f"label {value!r} is not one of the recipe's classes")
            value = self.classes.index(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SampleError(ctx.key, f"label {self.path!r} is {value!r}, not an integer")
        sample[self.target] = value
        return sample


@dataclass
class Filter(Operation):
    """Drop samples whose image is too small, or for which a predicate plugin says False."""

    name: ClassVar[str] = "filter"
    accepted: ClassVar[tuple[str, ...]] = ("min_width", "min_height", "predicate", "field")
    min_width: int = 0
    min_height: int = 0
    predicate: Plugin | None = None
    field_name: str = "image"

    @classmethod
    def parse(cls, p: Params) -> Filter:
        predicate = Plugin.parse(p.str("predicate"), p.where) if p.has("predicate") else None
        op = cls(
            p.int("min_width", 0, minimum=0),
            p.int("min_height", 0, minimum=0),
            predicate,
            p.str("field", "image"),
        )
        if not (op.min_width or op.min_height or predicate):
            raise p.error("needs min_width, min_height or predicate")
        return op

    def params(self) -> dict[str, Any]:
        return {
            "min_width": self.min_width,
            "min_height": self.min_height,
            "predicate": self.predicate.reference if self.predicate else None,
            "field": self.field_name,
        }

    def reads(self) -> set[str] | None:
        return None if self.predicate else set()

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        if self.min_width or self.min_height:
            image = _image(sample, self.field_name, ctx, "filter")
            if image.width < self.min_width:
                raise Dropped(f"image width {image.width} is below min_width {self.min_width}")
            if image.height < self.min_height:
                raise Dropped(f"image height {image.height} is below min_height {self.min_height}")
        if self.predicate is not None and not self.predicate.call(sample, ctx.key):
            raise Dropped(f"predicate {self.predicate.reference} returned false")
        return sample


@dataclass
class Keep(Operation):
    """Keep only the named fields."""

    name: ClassVar[str] = "keep"
    accepted: ClassVar[tuple[str, ...]] = ("fields",)
    fields: list[str]

    @classmethod
    def parse(cls, p: Params) -> Keep:
        return cls(p.str_list("fields"))

    def params(self) -> dict[str, Any]:
        return {"fields": self.fields}

    def reads(self) -> set[str]:
        return set(self.fields)

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        return {k: v for k, v in sample.items() if k == "__key__" or k in self.fields}


@dataclass
class Drop(Keep):
    """Remove the named fields."""

    name: ClassVar[str] = "drop"

    def reads(self) -> set[str]:
        return set()

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        return {k: v for k, v in sample.items() if k not in self.fields}


@dataclass
class Rename(Operation):
    """Rename fields: {old: new}."""

    name: ClassVar[str] = "rename"
    accepted: ClassVar[tuple[str, ...]] = ("fields",)
    fields: dict[str, str]

    @classmethod
    def parse(cls, p: Params) -> Rename:
        mapping = p.mapping("fields")
        if not all(isinstance(v, str) and v for v in mapping.values()):
            raise p.error("fields must map names to names")
        return cls(mapping)

    def params(self) -> dict[str, Any]:
        return {"fields": self.fields}

    def reads(self) -> set[str]:
        return set(self.fields)

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        for old, new in self.fields.items():
            if old in sample:
                sample[new] = sample.pop(old)
        return sample


@dataclass
class Map(Operation):
    """A plugin `package.module:function(sample) -> sample | None` (None drops the sample)."""

    name: ClassVar[str] = "map"
    accepted: ClassVar[tuple[str, ...]] = ("function",)
    function: Plugin

    @classmethod
    def parse(cls, p: Params) -> Map:
        return cls(Plugin.parse(p.str("function"), p.where))

    def params(self) -> dict[str, Any]:
        return {"function": self.function.reference}

    def reads(self) -> None:
        return None

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        result = self.function.call(sample, ctx.key)
        if result is None:
            raise Dropped(f"{self.function.reference} returned None")
        if not isinstance(result, dict):
            raise SampleError(
                ctx.key, f"{self.function.reference} returned {type(result).__name__}, not a dict"
            )
        if result.setdefault("__key__", ctx.key) != ctx.key:
            raise SampleError(ctx.key, f"{self.function.reference} changed the sample key")
        return result


@dataclass
class Encode(Operation):
    """The output members: {extension: field or {from, format, options}}; the rest is dropped
    unless `passthrough` keeps the members still holding their original bytes."""

    name: ClassVar[str] = "encode"
    accepted: ClassVar[tuple[str, ...]] = ("members", "passthrough")
    members: list[MemberEncoder]
    passthrough: bool = False

    @classmethod
    def parse(cls, p: Params) -> Encode:
        members = [_member_encoder(ext, spec, p) for ext, spec in p.mapping("members").items()]
        return cls(members, p.bool("passthrough", False))

    def params(self) -> dict[str, Any]:
        return {
            "members": {m.extension: m.params() for m in self.members},
            "passthrough": self.passthrough,
        }

    def reads(self) -> set[str] | None:
        return None if self.passthrough else {m.source for m in self.members}

    def expected_extensions(self) -> list[str] | None:
        """The extensions every written sample has, or None when passthrough makes it vary."""
        return None if self.passthrough else [m.extension for m in self.members]

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        return sample

    def encode(self, sample: Sample, ctx: SampleContext) -> list[tuple[str, bytes]]:
        """[(member name, bytes)] in a stable order: the recipe's, then passthrough fields."""
        written: list[tuple[str, bytes]] = []
        for member in self.members:
            value = _field(sample, member.source, ctx, f"the .{member.extension} member")
            try:
                written.append((f"{ctx.key}.{member.extension}", member.encode(value)))
            except EncodeError as exc:
                raise SampleError(ctx.key, f".{member.extension}: {exc}") from None
            except (OSError, ValueError) as exc:
                raise SampleError(ctx.key, f".{member.extension}: encoding failed: {exc}") from None
        if self.passthrough:
            taken = {m.extension for m in self.members}
            for name, value in sample.items():
                if name != "__key__" and name not in taken and isinstance(value, bytes):
                    written.append((f"{ctx.key}.{name}", value))
        return written


def _member_encoder(extension: Any, spec: Any, p: Params) -> MemberEncoder:
    if not isinstance(extension, str) or not extension or "/" in extension:
        raise p.error(f"bad output extension {extension!r}")
    if isinstance(spec, str):
        spec = {"from": spec}
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise p.error(f"member {extension!r}: expected a field name or a mapping, got {spec!r}")
    options = dict(spec)
    source = options.pop("from", extension)
    fmt = options.pop("format", None) or infer_format(extension)
    if fmt is None:
        raise p.error(
            f"member {extension!r}: cannot infer a format; add format: raw or one of "
            f"{', '.join(FORMATS)}"
        )
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in FORMATS:
        raise p.error(f"member {extension!r}: unknown format {fmt!r}")
    allowed = DEFAULT_OPTIONS.get(fmt, {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise p.error(
            f"member {extension!r}: unknown option {unknown[0]!r} for {fmt} "
            f"(expected: {', '.join(allowed) or 'none'})"
        )
    merged = {**allowed, **options}
    _check_encoder_options(fmt, merged, extension, p)
    return MemberEncoder(extension, source, fmt, merged)


def _check_encoder_options(fmt: str, options: dict[str, Any], ext: str, p: Params) -> None:
    ranges = {"compress_level": (0, 9), "quality": (1, 100), "method": (0, 6)}
    for name, value in options.items():
        if name in ranges:
            low, high = ranges[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise p.error(f"member {ext!r}: {name} must be an integer in {low}..{high}")
        elif not isinstance(value, bool):
            raise p.error(f"member {ext!r}: {name} must be true or false")


OPERATIONS: dict[str, type[Operation]] = {
    op.name: op
    for op in (
        DecodeImage,
        DecodeJson,
        Convert,
        Resize,
        CenterCrop,
        RandomCrop,
        HorizontalFlip,
        Normalize,
        Label,
        Filter,
        Keep,
        Drop,
        Rename,
        Map,
        Encode,
    )
}


def parse_operation(index: int, raw: Any) -> Operation:
    """One operation from `{"op": name, ...}` or the short form `{name: {...}}`."""
    where = f"recipe op {index + 1}"
    if isinstance(raw, str):
        raw = {"op": raw}
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{where}: expected a mapping, got {raw!r}")
    if "op" in raw:
        params = {k: v for k, v in raw.items() if k != "op"}
        name = raw["op"]
    elif len(raw) == 1:
        ((name, params),) = raw.items()
        params = {} if params is None else params
    else:
        raise RecipeError(f"{where}: expected {{op: NAME, ...}} or {{NAME: {{...}}}}")
    op_class = OPERATIONS.get(name) if isinstance(name, str) else None
    if op_class is None:
        raise RecipeError(
            f"{where}: unknown operation {name!r} (known: {', '.join(sorted(OPERATIONS))})"
        )
    if not isinstance(params, dict):
        if name in ("keep", "drop") and isinstance(params, list | str):
            params = {"fields": params}
        else:
            raise RecipeError(f"{where} ({name}): parameters must be a mapping, got {params!r}")
    return op_class.parse(Params(f"{where} ({name})", params, op_class.accepted))

