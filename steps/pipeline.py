"""A recipe made ready to run: plugins resolved, JPEG draft decoding planned, and one
function that turns a raw sample into an outcome (written, dropped or failed).

`process` is called from several threads at once: it shares no mutable state between
samples (each gets its own dict and its own seeded generator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import encoders, images
from .errors import SampleError, UsageError
from .ops import CenterCrop, Convert, DecodeImage, Dropped, Encode, Resize, SampleContext
from .ops_decode import DecodeJson
from .ops_fields import Label
from .ops_image import Normalize
from .recipe import Recipe
from .samples import RawSample


@dataclass(frozen=True)
class Outcome:
    """What became of one sample; exactly one of members, dropped or failed is set."""

    key: str
    members: list[tuple[str, bytes]] | None = None
    dropped: str | None = None
    failed: str | None = None


_PIXEL_STEPS = (Normalize, Label, DecodeJson, DecodeImage, Encode)
_EXTRAS = {"fpng": "fpng", "isal": "fast-png"}


class Pipeline:
    def __init__(self, recipe: Recipe, *, max_pixels: int, allowed_plugins: Iterable[str]) -> None:
        self.recipe = recipe
        self.max_pixels = max_pixels
        # Fixed for the whole run (later planning touches no hashed parameter): every shard's
        # manifest and --skip-existing check use these, computed once.
        self.canonical_recipe = recipe.canonical()
        self.recipe_hash = recipe.hash()
        allowed = list(allowed_plugins)
        for op in recipe.ops:
            for plugin in (getattr(op, "function", None), getattr(op, "predicate", None)):
                if plugin is not None:
                    plugin.resolve(allowed)
        self._plan_fused_steps()
        self._plan_pixel_buffers()
        self.png_encoders = self._png_encoders()
        self._reads = recipe.reads()
        self._steps = recipe.ops[:-1]
        self._encoder = recipe.encoder

    def _plan_fused_steps(self) -> None:
        """Two look-ahead optimisations, each between adjacent steps on the same field:
        an image step followed (after converts) by a resize decodes a JPEG at reduced size
        (libjpeg's DCT scaling); a resize followed by a center crop resamples only the region
        the crop keeps (the crop then cuts nothing)."""
        ops = self.recipe.ops
        for index, op in enumerate(ops):
            following = ops[index + 1] if index + 1 < len(ops) else None
            if isinstance(op, DecodeImage):
                position = index + 1
                while isinstance(ops[position], Convert) and ops[position].field_name == op.target:
                    position += 1
                resize = ops[position]
                if isinstance(resize, Resize) and resize.field_name == op.target:
                    op.draft = resize.draft_target
            elif (
                isinstance(op, Resize)
                and type(following) is CenterCrop
                and following.field_name == op.field_name
            ):
                op.crop = (following.width, following.height)

    def _plan_pixel_buffers(self) -> None:
        """A JPEG is decoded straight into a reused numpy buffer when every later step takes
        numpy pixels or leaves the image alone (normalize, label, json, encode, another image
        step); any other step (a resize, a crop, a plugin...) gets a Pillow image as before."""
        ops = self.recipe.ops
        for index, op in enumerate(ops):
            if isinstance(op, DecodeImage) and op.draft is None:
                later = ops[index + 1 :]
                if all(isinstance(o, _PIXEL_STEPS) for o in later):
                    op.scratch = images.Scratch()

    def _png_encoders(self) -> dict[str, dict[str, str | None]]:
        """Per PNG member at compress_level 1: the encoder that writes it and its version, for
        the manifest (bytes differ between encoders, pixels do not). A pinned encoder that is
        not installed is a usage error, before any work."""
        records = {}
        for member in self.recipe.encoder.members:
            if member.format != "png":
                continue
            if member.options.get("compress_level") != 1:
                records[member.extension] = encoders.png_encoder_record("pillow")
                continue
            pinned = member.options.get("encoder", "auto")
            if not encoders.png_encoder_installed(pinned):
                raise UsageError(
                    f"the recipe asks for the PNG encoder {pinned} for .{member.extension}, "
                    f"which is not installed (pip install 'shardflow[{_EXTRAS[pinned]}]')"
                )
            records[member.extension] = encoders.png_encoder_record(pinned)
        return records

    def wants(self, extension: str) -> bool:
        """Whether an input member must be read into memory (the rest is skipped unread)."""
        return self._reads is None or extension in self._reads

    @property
    def expected_extensions(self) -> list[str] | None:
        return self._encoder.expected_extensions()

    def process(self, raw: RawSample) -> Outcome:
        if raw.problem:
            return Outcome(raw.key, failed=raw.problem)
        sample = {**raw.data, "__key__": raw.key}  # the key last: no member can replace it
        ctx = SampleContext(raw.key, self.recipe.seed, self.max_pixels)
        try:
            for step in self._steps:
                sample = step.apply(sample, ctx)
            return Outcome(raw.key, members=self._encoder.encode(sample, ctx))
        except Dropped as drop:
            return Outcome(raw.key, dropped=drop.reason)
        except SampleError as error:
            return Outcome(raw.key, failed=error.cause)
        except Exception as exc:  # a decoder or plugin bug must cost one sample, not the shard
            return Outcome(raw.key, failed=f"unexpected {type(exc).__name__}: {exc}")
