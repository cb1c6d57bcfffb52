"""Sorting more lines than memory should hold: an external merge sort over temporary files.

Exact duplicate images are found by sorting (image sha256, shard, key) lines and reading runs
of equal hashes. A set or dict of every hash would be simpler and faster, but it grows with
the dataset (about 150 bytes a sample in Python: 150 GB for a billion samples); sorted runs
on local disk keep memory flat at RUN_LINES lines plus one buffered line per merged run, and
cost disk about the size of the lines plus a few passes over them. The same merge combines
the sorted runs each verify batch publishes, FAN_IN at a time, so the last step never opens
more than FAN_IN streams at once (a workflow has fewer batches: no spill there).
"""

from __future__ import annotations

import contextlib
import heapq
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

RUN_LINES = 100_000  # lines sorted in memory at once
FAN_IN = 256  # runs merged at once (at least the verify batches of one workflow)


class LineSource(Protocol):
    def readline(self) -> bytes: ...


Opener = Callable[[], AbstractContextManager[LineSource]]


class SortedSpool:
    """Lines (bytes ending in a newline) added in any order, read back sorted."""

    def __init__(self, run_lines: int = RUN_LINES) -> None:
        self._run_lines = run_lines
        self._buffer: list[bytes] = []
        self._runs: list[BinaryIO] = []

    def add(self, line: bytes) -> None:
        self._buffer.append(line)
        if len(self._buffer) >= self._run_lines:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        run = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        run.writelines(sorted(self._buffer))
        self._buffer = []
        self._runs.append(run)

    def sorted_lines(self) -> Iterator[bytes]:
        """Every line added, in byte order (read it once)."""
        if not self._runs:
            self._buffer.sort()
            yield from self._buffer
            return
        self._flush()
        yield from merge_sorted([_rewound(run) for run in self._runs])

    def opener(self) -> Opener:
        """The sorted lines as a source for `merge_sorted` (opened once)."""

        @contextlib.contextmanager
        def opened() -> Iterator[LineSource]:
            yield _LineStream(self.sorted_lines())

        return opened

    def close(self) -> None:
        for run in self._runs:
            run.close()
        self._runs = []
        self._buffer = []


class _LineStream:
    """An iterator of lines with the `readline` a merge reads sources by."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines

    def readline(self) -> bytes:
        return next(self._lines, b"")


def _rewound(run: BinaryIO) -> Opener:
    @contextlib.contextmanager
    def opener() -> Iterator[BinaryIO]:
        run.seek(0)
        yield run

    return opener


def merge_sorted(sources: list[Opener], fan_in: int = FAN_IN) -> Iterator[bytes]:
    """The lines of sorted sources, merged in order; at most `fan_in` open at once (more
    sources are first merged in groups into temporary files)."""
    spills: list[BinaryIO] = []
    try:
        while len(sources) > fan_in:
            merged: list[Opener] = []
            for start in range(0, len(sources), fan_in):
                spill = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
                spills.append(spill)
                spill.writelines(_merge_open(sources[start : start + fan_in]))
                merged.append(_rewound(spill))
            sources = merged
        yield from _merge_open(sources)
    finally:
        for done in spills:
            done.close()


def _merge_open(sources: list[Opener]) -> Iterator[bytes]:
    with contextlib.ExitStack() as stack:
        streams: list[Iterable[bytes]] = [
            iter(stack.enter_context(open_()).readline, b"") for open_ in sources
        ]
        yield from heapq.merge(*streams)
