"""A recipe made ready to run: plugins resolved, each operation's fusions with the ones
after it planned (`Operation.plugins`, `Operation.plan`), and one function that turns a raw
sample into an outcome (written, dropped or failed). It knows no concrete operation: adding
one touches its own module and the registry (ops.py) only.

`process` is called from several threads at once: it shares no mutable state between
samples (each gets its own dict and its own seeded generator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import SampleError
from .ops import Dropped, SampleContext
from .recipe import Recipe
from .samples import RawSample
from .tar_writer import MemberData


@dataclass(frozen=True)
class Outcome:
    """What became of one sample; exactly one of members, dropped or failed is set."""

    key: str
    members: list[tuple[str, MemberData]] | None = None  # bytes, or pieces of them
    dropped: str | None = None
    failed: str | None = None


class Pipeline:
    def __init__(self, recipe: Recipe, *, max_pixels: int, allowed_plugins: Iterable[str]) -> None:
        self.recipe = recipe
        self.max_pixels = max_pixels
        # Fixed for the whole run (later planning touches no hashed parameter): every shard's
        # manifest and --skip-existing check use these, computed once.
        self.canonical_recipe = recipe.canonical()
        self.recipe_hash = recipe.hash()
        allowed = list(allowed_plugins)
        ops = recipe.ops
        for index, op in enumerate(ops):
            for plugin in op.plugins():
                plugin.resolve(allowed)
            op.plan(ops[index + 1 :])  # fusions with the operations that follow
        self._reads = recipe.reads()
        self._steps = ops[:-1]
        self._encoder = recipe.encoder
        # For the manifest; a PNG encoder the recipe pins but is not installed: UsageError.
        self.png_encoders = self._encoder.png_encoders()
        # For the manifest: the libraries whose output may differ between installs (the
        # resizer of `resample: area`), per operation in recipe order.
        self.implementations = [
            {"operation": op.name, **record} for op in ops if (record := op.implementation())
        ]

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
