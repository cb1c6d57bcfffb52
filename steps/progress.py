"""Progress for people and for Argo.

Argo reads `N/M` from the file named by `ARGO_PROGRESS_FILE` every few seconds and shows it
per node and summed over the workflow. We count each shard as 100 units (the share of its
bytes read so far), so a one-shard task still moves smoothly and a workflow's total weighs
every shard the same. In a terminal a bar shows the same count with samples and speed.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from collections.abc import Iterable
from typing import Protocol, TextIO

UNITS_PER_SHARD = 100
ARGO_PROGRESS_FILE = "ARGO_PROGRESS_FILE"
INTERVAL_VARIABLE = "SHARDFLOW_PROGRESS_INTERVAL"


class ShardProgress(Protocol):
    """What writing one shard reports: its size when opened, then bytes read and samples."""

    def shard_started(self, size: int | None) -> None: ...

    def advance(self, bytes_read: int, samples: int = 0) -> None: ...


def shard_units(bytes_read: int, size: int | None) -> int:
    """A shard's progress in units: the share of its bytes read, short of the last unit
    (which only its end gives)."""
    if not size:
        return 0
    return min(UNITS_PER_SHARD - 1, UNITS_PER_SHARD * bytes_read // size)


def write_progress_file(path: str, done: int, total: int) -> None:
    """Replace the file's content with `done/total` in one step (readers never see it torn)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as stream:
        stream.write(f"{done}/{total}")
    os.replace(temporary, path)


class Progress:
    """Tracks shards done, the current shard's bytes, and samples; reports to bar and file."""

    def __init__(
        self,
        total_shards: int,
        *,
        bar: bool,
        argo_file: str | None = None,
        interval: float | None = None,
        stream: TextIO | None = None,
        bar_interval: float = 0.5,
        desc: str = "augment",
    ) -> None:
        self.total = total_shards * UNITS_PER_SHARD
        self._argo_file = argo_file
        self._interval = interval if interval is not None else _interval_from_env()
        self._shards_done = 0
        self._total_shards = total_shards
        self._current_units = 0
        self._size: int | None = None
        self._samples = 0
        self._started = time.monotonic()
        self._last_file_write = float("-inf")
        self._bar = None
        if bar:  # imported only here: a step that shows no bar (a pod's) skips tqdm's import
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=desc,
                unit="%",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",
                file=stream or sys.stderr,
                mininterval=bar_interval,
            )
        self._report(force=True)

    @property
    def done(self) -> int:
        return self._shards_done * UNITS_PER_SHARD + self._current_units

    def shard_started(self, size: int | None) -> None:
        self._size = size
        self._current_units = 0

    def advance(self, bytes_read: int, samples: int = 0) -> None:
        self._samples += samples
        self._current_units = max(self._current_units, shard_units(bytes_read, self._size))
        self._report()

    def show_running(self, units: int, samples: int) -> None:
        """Shards being written by worker processes (SharedShardProgress): the units of
        those not finished yet, and every sample read so far, in place of advance()."""
        self._current_units = units
        self._samples = samples
        self._report()

    def shard_finished(self) -> None:
        self._shards_done += 1
        self._current_units = 0
        self._size = None
        self._report(force=True)

    def write_line(self, line: str, stream: TextIO) -> None:
        """Print a line without tearing the bar."""
        if self._bar is not None:
            self._bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        self._report(force=True)
        if self._bar is not None:
            self._bar.close()

    def _report(self, force: bool = False) -> None:
        done = self.done
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            self._bar.set_postfix_str(
                f"shard {min(self._shards_done + 1, self._total_shards)}/{self._total_shards}, "
                f"{self._samples} samples, {self._samples / elapsed:.1f}/s",
                refresh=False,
            )
            if force:
                self._bar.n = done
                self._bar.refresh()
            else:  # update() redraws at most every mininterval, also within a shard
                self._bar.update(done - self._bar.n)
        if self._argo_file:
            now = time.monotonic()
            if force or now - self._last_file_write >= self._interval:
                self._last_file_write = now
                try:
                    write_progress_file(self._argo_file, done, self.total)
                except OSError:
                    self._argo_file = None  # progress must never fail the work


def _interval_from_env() -> float:
    try:
        return float(os.environ.get(INTERVAL_VARIABLE, "3"))
    except ValueError:
        return 3.0


class SharedShardProgress:
    """The progress of shards written in worker processes: two counters a shard (units,
    samples) in memory shared with the workers, which write them as they go; the parent sums
    them for its bar and Argo's file while it waits."""

    def __init__(self, shards: int) -> None:
        self._memory = mmap.mmap(-1, max(1, shards) * 16)  # mapped before the fork
        self._cells = memoryview(self._memory).cast("q")

    def for_shard(self, index: int) -> _SharedShard:
        return _SharedShard(self._cells, index)

    def totals(self, unfinished: Iterable[int]) -> tuple[int, int]:
        """(units of the unfinished shards, samples read in every shard)."""
        units = sum(self._cells[2 * index] for index in unfinished)
        return units, sum(self._cells[1::2])


class _SharedShard:
    """One shard's counters, written by the worker that writes the shard."""

    def __init__(self, cells: memoryview, index: int) -> None:
        self._cells, self._index = cells, index
        self._size: int | None = None

    def shard_started(self, size: int | None) -> None:
        self._size = size

    def advance(self, bytes_read: int, samples: int = 0) -> None:
        at = 2 * self._index
        self._cells[at] = shard_units(bytes_read, self._size)
        self._cells[at + 1] += samples
