"""The names of a reshard's outputs: a brace pattern (a fixed list) or a printf pattern
(`out/train-%06d.tar`: as many as the plan needs).

How many outputs a reshard makes is known only once the inputs are counted (and, with
--max-shard-bytes, packed), so a brace pattern may name too few: the plan step then stops,
before anything is written, saying how many names are needed.
"""

from __future__ import annotations

import re

from . import storage
from .errors import UsageError

_PRINTF = re.compile(r"%(0?\d*)d")


MOST_LEFT_OVER = 1000  # names checked past the outputs for an earlier run's shards


class OutputNames:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        fields = _PRINTF.findall(pattern)
        if len(fields) > 1:
            raise UsageError(f"output pattern {pattern!r} has {len(fields)} %d fields, not one")
        self._printf = bool(fields)
        if self._printf:
            if "{" in pattern:
                raise UsageError(f"output pattern {pattern!r} mixes braces and %d: give one")
            self._names: list[str] | None = None
        else:
            self._names = storage.expand(pattern)

    @property
    def count(self) -> int | None:
        """How many names the pattern has (None: a printf pattern, as many as needed)."""
        return None if self._names is None else len(self._names)

    def url(self, index: int) -> str:
        if self._names is None:
            match = _PRINTF.search(self.pattern)
            assert match is not None
            return self.pattern[: match.start()] + match[0] % index + self.pattern[match.end() :]
        return self._names[index]

    def require(self, needed: int) -> None:
        """UsageError when the pattern has fewer than `needed` names."""
        if self._names is not None and needed > len(self._names):
            raise UsageError(
                f"OUTPUTS {self.pattern!r} names {len(self._names)} shards but this reshard "
                f"needs at least {needed}: give a pattern with enough names, or a printf "
                "pattern such as out/train-%06d.tar"
            )

    def first(self) -> str:
        return self.url(0)

    def left_over(
        self, used: int, options: storage.StorageOptions, most: int = MOST_LEFT_OVER
    ) -> list[str]:
        """The names after the first `used` that already hold a shard, in order until one is
        free (at most `most`): an earlier run into more of these names left them, and a reader
        globbing the folder would take them for part of this dataset."""
        found: list[str] = []
        index = used
        while len(found) < most and (self.count is None or index < self.count):
            url = self.url(index)
            if not storage.exists(url, options):
                break
            found.append(url)
            index += 1
        return found
