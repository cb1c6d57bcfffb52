"""The last operation of every recipe: which fields become which output members, and how."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .encoders import (
    DEFAULT_OPTIONS,
    FORMATS,
    PNG_ENCODERS,
    EncodeError,
    MemberEncoder,
    canonical_format,
    infer_format,
    png_encoder_installed,
    png_encoder_record,
)
from .errors import SampleError, UsageError
from .operation import Operation, Sample, SampleContext, field_value
from .params import Params, shown
from .samples import extension_reason
from .tar_writer import MemberData

_EXTRAS = {"fpng": "fpng", "isal": "fast-png"}  # the extra that installs each encoder


@dataclass
class Encode(Operation):
    """The output members: {extension: field or {from, format, options}}; the rest is dropped
    unless `passthrough` keeps the members still holding their original bytes."""

    name: ClassVar[str] = "encode"
    accepted: ClassVar[tuple[str, ...]] = ("members", "passthrough")
    takes_pixels: ClassVar[bool] = True
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

    def png_encoders(self) -> dict[str, dict[str, str | None]]:
        """Per PNG member: the encoder that writes it and its version, for the manifest (bytes
        differ between encoders, pixels do not). A pinned encoder that is not installed is a
        usage error, before any work."""
        records = {}
        for member in self.members:
            if member.format != "png":
                continue
            pinned = member.options.get("encoder", "auto")
            if member.options.get("compress_level") != 1:
                pinned = "pillow"  # other levels: Pillow's own
            elif not png_encoder_installed(pinned):
                raise UsageError(
                    f"the recipe asks for the PNG encoder {pinned} for .{member.extension}, "
                    f"which is not installed (pip install 'shardflow[{_EXTRAS[pinned]}]')"
                )
            records[member.extension] = png_encoder_record(pinned)
        return records

    def encode(self, sample: Sample, ctx: SampleContext) -> list[tuple[str, MemberData]]:
        """[(member name, bytes)] in a stable order: the recipe's, then passthrough fields."""
        written: list[tuple[str, MemberData]] = []
        for member in self.members:
            value = field_value(sample, member.source, ctx, f"the .{member.extension} member")
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
                    # A plugin may have named the field: it is checked as a recipe's would be.
                    reason = extension_reason(name)
                    if reason is not None:
                        raise SampleError(
                            ctx.key, f"field {shown(name)} cannot be written as a member: {reason}"
                        )
                    written.append((f"{ctx.key}.{name}", value))
        return written


def _member_encoder(extension: Any, spec: Any, p: Params) -> MemberEncoder:
    reason = extension_reason(extension)
    if reason is not None:
        raise p.error(f"bad output extension {shown(extension)}: {reason}")
    if isinstance(spec, str):
        spec = {"from": spec}
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise p.error(
            f"member {shown(extension)}: expected a field name or a mapping, got {shown(spec)}"
        )
    options = dict(spec)
    source = options.pop("from", None)
    source = extension if source is None else source  # null means the default, as elsewhere
    if not isinstance(source, str) or not source:
        raise p.error(f"member {shown(extension)}: from must be a field name, got {shown(source)}")
    fmt = options.pop("format", None) or infer_format(extension)
    if fmt is None:
        raise p.error(
            f"member {shown(extension)}: cannot infer a format; add format: raw or one of "
            f"{', '.join(FORMATS)}"
        )
    fmt = canonical_format(fmt) if isinstance(fmt, str) else fmt
    if fmt not in FORMATS:
        raise p.error(f"member {shown(extension)}: unknown format {shown(fmt)}")
    allowed = DEFAULT_OPTIONS.get(fmt, {})
    known = [*allowed, *(["encoder"] if fmt == "png" else [])]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise p.error(
            f"member {shown(extension)}: unknown option {shown(unknown[0])} for {fmt} "
            f"(expected: {', '.join(known) or 'none'})"
        )
    merged = {**allowed, **options}
    if merged.get("encoder") == "auto":
        del merged["encoder"]  # the default: the recipe (and its hash) as if it were absent
    _check_encoder_options(fmt, merged, extension, p)
    return MemberEncoder(extension, source, fmt, merged)


def _check_encoder_options(fmt: str, options: dict[str, Any], ext: str, p: Params) -> None:
    ranges = {"compress_level": (0, 9), "quality": (1, 100), "method": (0, 6)}
    for name, value in options.items():
        if name == "encoder":
            if value not in PNG_ENCODERS:
                raise p.error(
                    f"member {shown(ext)}: encoder must be one of {', '.join(PNG_ENCODERS)}, "
                    f"got {shown(value)}"
                )
            if value != "pillow" and options.get("compress_level") != 1:
                raise p.error(
                    f"member {shown(ext)}: encoder {value} writes at compress_level 1 only; "
                    "other levels need encoder: pillow"
                )
        elif name in ranges:
            low, high = ranges[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise p.error(f"member {shown(ext)}: {name} must be an integer in {low}..{high}")
        elif not isinstance(value, bool):
            raise p.error(f"member {shown(ext)}: {name} must be true or false")
