"""Which input shard becomes which output shard, how many tasks a run has, and which pairs
each task processes.

The plan pod counts the tasks and every augment pod recomputes its own batch from the same
patterns; both call this module, so the count one publishes and the slices the others take
cannot disagree. It is also where a run is refused, before any byte is read, when writing
would destroy something it still needs: an output (or the manifest beside it) at the location
of an input, or two outputs at one location. Locations are compared resolved, not as strings:
`./in/x.tar`, `/abs/in/x.tar`, `file:///abs/in/x.tar`, a path through a symlinked folder and
the folder form `in/` are one file, and `S3://Bucket/a/../x.tar` is `s3://bucket/x.tar`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast
from urllib.parse import urlsplit

from fsspec.implementations.local import LocalFileSystem

from . import storage
from .errors import UsageError
from .manifest import manifest_url
from .redact import path_name, redact_url
from .shard_index import SIZES_NAME, default_index_url

Pair = tuple[str, str]
T = TypeVar("T")
Shards = TypeVar("Shards", bound=Sequence)  # a list gives a list, a range a range

_SAME_STORE = {"s3a": "s3", "gcs": "gs"}  # fsspec's aliases for one back-end
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Already in the one spelling `location` gives: lower-case scheme (not an alias) and host,
# no credentials or port, no empty path segment, no query; dot segments are looked for apart.
_CANONICAL = re.compile(r"(?!s3a://|gcs://)[a-z][a-z0-9+.-]*://[a-z0-9._-]+(/[^/?#]+)*")
_DOT_SEGMENT = re.compile(r"/\.\.?(/|$)")


def pair_shards(input_pattern: str, output_pattern: str) -> list[Pair]:
    """Expand both patterns and pair them by position (an OUTPUT ending in "/" is a directory
    receiving shards of the inputs' names); raise UsageError for pairs that cannot all be
    written safely (see `refuse_aliases`)."""
    inputs = storage.expand(input_pattern)
    if output_pattern.endswith("/"):
        outputs = [output_pattern + path_name(url) for url in inputs]  # never a query
    else:
        outputs = storage.expand(output_pattern)
    if len(inputs) != len(outputs):
        raise UsageError(
            f"{len(inputs)} input shards but {len(outputs)} output shards: the patterns must "
            "expand to the same number of URLs"
        )
    pairs = list(zip(inputs, outputs, strict=True))
    refuse_aliases(inputs, shard_writes(pairs))
    return pairs


@dataclass(frozen=True)
class Write:
    """A URL a run writes and what it is ("the verify report", "the output of" another URL):
    described only when refused, so a million shards cost no message formatting."""

    url: str
    what: str
    of: str | None = None

    def describe(self) -> str:
        return self.what if self.of is None else f"{self.what} {_shown(self.of)}"


def shard_writes(pairs: list[Pair]) -> list[Write]:
    """What augmenting the pairs writes: each output and its manifest, then the index."""
    writes = []
    for input_url, output_url in pairs:
        writes.append(Write(output_url, "the output of", input_url))
        writes.append(Write(manifest_url(output_url), "the manifest of", output_url))
    return writes + index_writes([output for _, output in pairs])


def index_writes(shards: list[str], index_url: str | None = None) -> list[Write]:
    """The dataset index of the shards (shard_index.py): the wids JSON (by default beside
    the first shard) and a sizes.json in each folder."""
    folders = sorted({url.rstrip("/").rpartition("/")[0] for url in shards})
    return [
        Write(index_url or default_index_url(shards), "the dataset index"),
        *(Write(f"{f}/{SIZES_NAME}" if f else SIZES_NAME, "the shard counts") for f in folders),
    ]


def refuse_aliases(reads: Iterable[str], writes: Iterable[Write]) -> None:
    """Raise UsageError when a written URL is at the location of a URL that is read, or of
    another written URL: the whole sets are compared, so crossed pairs (a -> b while b -> c)
    are caught too, not only an input paired with itself."""
    resolve = _Locations()
    read_at: dict[str, str] = {}
    for url in reads:
        read_at.setdefault(resolve(url, written=False), url)
    written_at: dict[str, Write] = {}
    for write in writes:
        url, what = write.url, write.describe
        where = resolve(url, written=True)
        if where in read_at:
            raise UsageError(
                f"{_shown(url)} ({what()}) is both an input and an output: it is "
                f"{_shown(read_at[where])}{_same_as(where, url, read_at[where])}, which this "
                "run reads and writing would destroy"
            )
        if where in written_at:
            other = written_at[where]
            raise UsageError(
                f"{_shown(other.url)} ({other.describe()}) and {_shown(url)} ({what()}) map to "
                f"the same output{_same_as(where, url, other.url)}: give OUTPUT as a pattern "
                "that names every shard"
            )
        written_at[where] = write


def check_urls(pairs: Iterable[Pair], *, allow_pipe: bool = False) -> None:
    """storage.check_url once per scheme and direction: a pattern's URLs share their risks."""
    directed = (each for read, written in pairs for each in ((read, False), (written, True)))
    _check_once(directed, allow_pipe=allow_pipe)


def shards_to_read(pattern: str) -> list[str]:
    """The pattern's URLs, each of a scheme this process can read (UsageError, before any
    byte is read, for one it cannot): what check, index and verify read."""
    return shards_to_read_from(storage.expand(pattern))


def shards_to_read_from(urls: list[str]) -> list[str]:
    """`shards_to_read` for URLs listed elsewhere (a reshard's plan names its outputs)."""
    _check_once((url, False) for url in urls)
    return urls


def _check_once(urls: Iterable[tuple[str, bool]], *, allow_pipe: bool = False) -> None:
    seen: set[tuple[str, bool]] = set()
    for url, writing in urls:
        key = ("pipe" if url.startswith("pipe:") else storage.scheme(url), writing)
        if key not in seen:
            seen.add(key)
            storage.check_url(url, writing=writing, allow_pipe=allow_pipe)


def task_count(shards: int, per_task: int) -> int:
    """Tasks of `per_task` shards needed for `shards` (the last one may be smaller)."""
    if per_task < 1:
        raise UsageError(f"shards-per-task {per_task} is not a positive integer")
    return -(-shards // per_task)


AUTO = "auto"
# Argo's UI and controller slow down past about 2,000 nodes, two per task (workflows/plan.py
# counts them). A workflow's fan-outs before verify hold at most MAX_TASKS tasks in all, and
# verify at most verify_files.MAX_VERIFY_TASKS: the augment DAG's augment pods take the whole
# MAX_TASKS; the reshard DAG's count pods (each reads only manifests or tar headers, as cheap
# as verifying) at most MAX_COUNT_TASKS and its write pods the rest.
MAX_TASKS = 800
MAX_COUNT_TASKS = 180
MAX_WRITE_TASKS = MAX_TASKS - MAX_COUNT_TASKS


@dataclass(frozen=True)
class Fanout:
    """One fan-out's batch rule: its option's name, what it batches, at most how many tasks,
    and the smallest batch `auto` picks (a task must be worth its pod's start-up)."""

    option: str  # "shards-per-task"
    items: str  # "shards"
    max_tasks: int = MAX_TASKS
    smallest: int = 1

    def auto_help(self) -> str:
        """What `auto` picks, for help texts and the Argo form."""
        return f"{AUTO}: {self.smallest} unless that makes more than {self.max_tasks} tasks"

    def per_task(self, value: str | int, count: int, *, refuse: bool = True) -> int:
        """Items per task for `count` items: `auto` gives the smallest batch (at least
        `smallest`) that makes at most `max_tasks` tasks; a number is taken as given, but
        refused (UsageError) when it makes more tasks than that, unless `refuse` is False (a
        local run, whose batches are no pods). Every pod of a DAG calls this with the same
        value and count, so they agree on the batches without passing them."""
        if str(value).strip() == AUTO:
            return max(self.smallest, task_count(count, self.max_tasks))
        per_task = int(per_task_value(str(value), self.option))
        tasks = task_count(count, per_task)
        if refuse and tasks > self.max_tasks:
            raise UsageError(
                f"{count} {self.items} in batches of {per_task} make {tasks} tasks, more than "
                f"the {self.max_tasks} a workflow handles well: use {self.option} "
                f"{task_count(count, self.max_tasks)} or more (or {AUTO}), or split the dataset "
                "into several workflows (README: scaling)"
            )
        return per_task


# The reshard DAG's count and write fan-outs (steps/reshard_cli.py): `auto` keeps at least as
# many inputs (a manifest or tar headers each) or outputs as make a pod worth its start-up.
RESHARD_COUNT = Fanout("inputs-per-task", "inputs", MAX_COUNT_TASKS, smallest=100)
RESHARD_WRITE = Fanout("shards-per-task", "outputs", MAX_WRITE_TASKS, smallest=10)


def per_task_value(text: str, option: str = "shards-per-task") -> str | int:
    """A batch-size option's value: `auto` or a positive integer (UsageError otherwise)."""
    if text.strip() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{option} {text!r} is neither a positive integer nor {AUTO!r}")
    return value


@dataclass(frozen=True)
class Batch:
    """Task `index` of a run split into batches of `per_task` pairs (augment), URLs (index,
    reshard count) or output numbers (reshard write, a `range`: never a list of a million)."""

    index: int
    per_task: int

    def of(self, shards: Shards) -> Shards:
        """This task's shards (pairs, or URLs); UsageError when the run has no task `index`."""
        count = task_count(len(shards), self.per_task)
        if not 0 <= self.index < count:
            raise UsageError(
                f"--task-index {self.index} is out of range: {len(shards)} shards in batches of "
                f"{self.per_task} make {count} tasks (0..{count - 1})"
            )
        start = self.index * self.per_task
        return cast(Shards, shards[start : start + self.per_task])


def location(url: str, *, written: bool) -> str:
    """Where `url` is, in one spelling per place.

    Local paths (plain or `file://`) are made absolute as fsspec opens them, with symlinks
    resolved: completely for what is read (a symlinked input is its target), up to the parent
    for what is written (publishing renames onto the name itself, replacing a symlink there
    rather than its target; the parent need not exist yet). Other URLs keep their scheme
    (fsspec's aliases merged), host and port (lower-cased, the default port dropped, the
    credentials left out) and path without `.`, `..` or empty segments.
    """
    return _Locations()(url, written=written)


class _Locations:
    """`location`, remembering resolved folders: the shards of a run share a few."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, url: str, *, written: bool) -> str:
        if url.startswith("pipe:"):
            return url
        scheme, separator, _ = url.partition("://")
        if not separator or scheme.lower() in ("file", "local"):
            return self._local(LocalFileSystem._strip_protocol(url), follow=not written)
        if _CANONICAL.fullmatch(url) and not _DOT_SEGMENT.search(url):
            return url  # most shard URLs: nothing to normalise, and no urlsplit to pay for
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        scheme = _SAME_STORE.get(scheme, scheme)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{_shown(url)}: the port is not a number") from None
        if port is not None and port != _DEFAULT_PORTS.get(scheme):
            host += f":{port}"
        query = f"?{parts.query}" if parts.query else ""
        return f"{scheme}://{host}{_without_dot_segments(parts.path)}{query}"

    def _local(self, path: str, *, follow: bool) -> str:
        parent, _, name = path.rpartition("/")
        if name in ("", ".", "..") or (follow and os.path.islink(path)):
            return os.path.realpath(path)
        folder = self._folders.get(parent)
        if folder is None:
            folder = self._folders[parent] = os.path.realpath(parent or "/").rstrip("/")
        return f"{folder}/{name}"


def _without_dot_segments(path: str) -> str:
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    return "/" + "/".join(kept) if kept else ""


def _same_as(where: str, *urls: str) -> str:
    """The location in brackets, when a URL is spelled differently from it."""
    return "" if all(url == where for url in urls) else f" ({redact_url(where)})"


def _shown(url: str) -> str:
    """The URL quoted for a message, without credentials (`s3://key:secret@bucket/x`)."""
    return repr(redact_url(url))
