"""Operations on fields rather than pixels: labels, filters, keep/drop/rename, plugins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import SampleError
from .operation import Dropped, Operation, Sample, SampleContext, field_value, image_field
from .ops_decode import parse_json
from .params import Params, shown
from .plugins import Plugin
from .samples import extension_reason


@dataclass
class Label(Operation):
    """Take a class label from a JSON field (dotted path; list indices as numbers)."""

    name: ClassVar[str] = "label"
    accepted: ClassVar[tuple[str, ...]] = ("from", "path", "to", "classes")
    takes_pixels: ClassVar[bool] = True  # reads a JSON field only
    source: str = "json"
    path: str = "cls"
    target: str = "cls"
    classes: list[str] | None = None

    @classmethod
    def parse(cls, p: Params) -> Label:
        classes = p.str_list("classes") if p.has("classes") else None
        return cls(p.str("from", "json"), p.str("path", "cls"), p.field("to", "cls"), classes)

    def params(self) -> dict[str, Any]:
        return {"from": self.source, "path": self.path, "to": self.target, "classes": self.classes}

    def reads(self) -> set[str]:
        return {self.source}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        document = parse_json(field_value(sample, self.source, ctx, "label"), ctx.key, self.source)
        sample[self.source] = document
        value = document
        for part in self.path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise SampleError(ctx.key, f".{self.source} has no field {shown(self.path)}")
        if self.classes is not None:
            if value not in self.classes:
                raise SampleError(ctx.key, f"label {value!r} is not one of the recipe's classes")
            value = self.classes.index(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SampleError(ctx.key, f"label {shown(self.path)} is {value!r}, not an integer")
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

    def plugins(self) -> tuple[Plugin, ...]:
        return (self.predicate,) if self.predicate is not None else ()

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        if self.min_width or self.min_height:
            image = image_field(sample, self.field_name, ctx, "filter")
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
        for new in mapping.values():
            # A renamed field is written under its new name by passthrough: it is a member name.
            reason = extension_reason(new)
            if reason is not None:
                raise p.error(f"cannot rename to {shown(new)}: {reason}")
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

    def plugins(self) -> tuple[Plugin, ...]:
        return (self.function,)

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
