"""Decoding members: images (format-limited, size-checked, upright) and JSON (UTF-8 only).

Nothing else is ever decoded: no pickle, no torch.load, whatever the member's extension.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import images
from .errors import SampleError
from .operation import MODES, Operation, Sample, SampleContext, field_value
from .ops_image import Convert, Resize
from .params import Params, shown


@dataclass
class DecodeImage(Operation):
    """Decode the first present of several image members (`jpg;png`) into one field."""

    name: ClassVar[str] = "image"
    accepted: ClassVar[tuple[str, ...]] = ("from", "to", "mode")
    takes_pixels: ClassVar[bool] = True  # writes its own field only
    sources: list[str]
    target: str = "image"
    mode: str | None = None
    draft: images.DraftPlanner | None = field(default=None, repr=False, compare=False)
    # Set by plan() when every later step takes numpy pixels: a JPEG is then decoded
    # straight into a buffer reused by this thread's (or worker process's) next sample.
    scratch: images.Scratch | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, p: Params) -> DecodeImage:
        sources = [s.lower() for s in p.str_list("from", ["jpg", "png"])]
        for source in sources:
            if source.rsplit(".", 1)[-1] not in images.PIL_FORMATS:
                raise p.error(
                    f"cannot decode {shown(source)}: images are read from jpg, png or webp"
                )
        mode = p.str("mode", choices=MODES) if p.has("mode") else None
        return cls(sources, p.field("to", "image"), mode)

    def params(self) -> dict[str, Any]:
        return {"from": ";".join(self.sources), "to": self.target, "mode": self.mode}

    def reads(self) -> set[str]:
        return set(self.sources)

    def plan(self, following: Sequence[Operation]) -> None:
        """A resize of the decoded field next (after converts, which keep the size): decode
        a JPEG at reduced size (libjpeg's DCT scaling), into a reused numpy buffer when that
        resize is right after and takes numpy pixels (`area`). Otherwise, when every later
        step takes numpy pixels or leaves images alone (`takes_pixels`: normalize, label,
        json, encode, another image step), decode a JPEG straight into a reused numpy buffer;
        any other step (a resize, a crop, a plugin...) gets a Pillow image."""
        self._plan_draft(following)
        if self.draft is None and all(op.takes_pixels for op in following):
            self.scratch = images.Scratch()

    def _plan_draft(self, following: Sequence[Operation]) -> None:
        for index, op in enumerate(following):
            if isinstance(op, Convert) and op.field_name == self.target:
                continue
            if isinstance(op, Resize) and op.field_name == self.target:
                self.draft = op.draft_target
                if index == 0 and op.takes_drafted_pixels():
                    self.scratch = images.Scratch()
            return

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        for source in self.sources:
            data = sample.get(source)
            if data is None:
                continue
            if not isinstance(data, bytes):
                raise SampleError(ctx.key, f"field {source!r} was already decoded")
            try:
                image = images.decode_image_or_pixels(
                    data,
                    source,
                    max_pixels=ctx.max_pixels,
                    draft=self.draft,
                    pixels=None if self.scratch is None else (self.mode, self.scratch),
                )
            except images.ImageDecodeError as exc:
                raise SampleError(ctx.key, str(exc)) from None
            if isinstance(image, images.Pixels):
                pass  # already in the mode asked for
            elif self.mode and image.mode != self.mode:
                image = images.convert_mode(image, self.mode)
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
    takes_pixels: ClassVar[bool] = True
    source: str = "json"
    target: str = "json"

    @classmethod
    def parse(cls, p: Params) -> DecodeJson:
        source = p.str("from", "json")
        return cls(source, p.field("to", source))

    def params(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target}

    def reads(self) -> set[str]:
        return {self.source}

    def apply(self, sample: Sample, ctx: SampleContext) -> Sample:
        value = field_value(sample, self.source, ctx, "json")
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
