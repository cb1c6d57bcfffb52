"""Byte ranges of input shards: what a reshard task reads, without a scratch copy.

An output shard of a reshard is made of samples at known offsets in many inputs (the plan
says where). Each sample is one request for the span from its first member's data to its
last member's end: a local `pread`, an HTTP `Range` request, an S3/GCS ranged GET (fsspec's
`cat_file(path, start, end)`). Neighbouring spans of one input are merged into one request
(an unshuffled reshard reads its inputs in order, in a few large requests), and several
requests are in flight at once (`fetch_spans`), order kept.

A server that ignores `Range` answers with the whole object: such an input is found by
asking for its first block (`serves_ranges`) and refused for `--shuffle`; unshuffled, it is
read as a stream from its start, skipping what is not needed (`StreamSource`). A compressed
input (`.tar.gz`) is the same: its offsets are those of the decompressed stream.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from . import storage
from .errors import ShardError
from .parallel import ordered_map
from .storage_faults import describe

MERGE_GAP = 64 << 10  # bytes between two spans still read as one request
MAX_REQUEST = 4 << 20  # a merged request stops growing here (2 x threads are in flight)
PROBE_BYTES = 512  # one tar header block


class Source(Protocol):
    def read(self, start: int, end: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of input `source` (an index into the caller's list of URLs)."""

    source: int
    start: int
    end: int


class LocalSource:
    """A local file read with pread: thread-safe, no seek position shared."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, start: int, end: int) -> bytes:
        return os.pread(self._fd, end - start, start)

    def close(self) -> None:
        os.close(self._fd)


class RangedSource:
    """Any fsspec back-end that serves ranges (S3, GCS, HTTP with Range)."""

    def __init__(self, url: str, options: storage.StorageOptions) -> None:
        self._url = url
        self._fs, self._path = storage.filesystem(url, options)

    def read(self, start: int, end: int) -> bytes:
        data = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) != end - start:
            raise ShardError(
                self._url,
                f"asked for bytes {start}-{end - 1} and got {len(data)} bytes: the server does "
                "not serve byte ranges",
            )
        return data

    def close(self) -> None:
        pass


class StreamSource:
    """An input that cannot serve ranges, read once from its start: spans must come in
    increasing order (an unshuffled reshard asks for them so); an earlier span reopens it."""

    def __init__(self, url: str, options: storage.StorageOptions) -> None:
        self._url = url
        self._options = options
        self._lock = threading.Lock()
        self._context: contextlib.AbstractContextManager[BinaryIO] | None = None
        self._stream: BinaryIO | None = None
        self._position = 0

    def read(self, start: int, end: int) -> bytes:
        with self._lock:
            if self._stream is None or start < self._position:
                self._reopen()
            self._skip(start - self._position)
            data = self._exactly(end - start)
            if len(data) != end - start:
                raise ShardError(self._url, f"the input ends before byte {end}")
            return data

    def _reopen(self) -> None:
        self.close()
        context = storage.open_input(self._url, self._options)  # .tar.gz: decompressed
        self._stream = context.__enter__()
        self._context = context
        self._position = 0

    def _skip(self, count: int) -> None:
        while count > 0:
            got = len(self._exactly(min(count, 1 << 20)))
            if not got:
                raise ShardError(self._url, "the input ends before the sample the plan names")
            count -= got

    def _exactly(self, count: int) -> bytes:
        assert self._stream is not None
        data = storage.read_up_to(self._stream, count)
        self._position += len(data)
        return data

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
        self._context = self._stream = None


def serves_ranges(url: str, options: storage.StorageOptions) -> bool:
    """Whether the input answers a ranged read with just the range (local files and object
    stores always do; an HTTP server may ignore `Range` and send the whole object)."""
    if storage.compression_of(url):
        return False  # offsets are in the decompressed stream, which has no ranges
    if storage.scheme(url) not in ("http", "https"):
        return True
    # Bytes 512-1023, through fsspec's HTTP file: a server that answers with the whole object
    # is found from the response's headers, before its body is read (a probe of a 40 GB
    # shard must not download it), and an object of unknown size cannot seek at all.
    try:
        fs, path = storage.filesystem(url, options)
        with fs.open(path, "rb", block_size=PROBE_BYTES) as stream:
            stream.seek(PROBE_BYTES)
            return len(stream.read(PROBE_BYTES)) == PROBE_BYTES
    except ValueError:  # "doesn't appear to support range requests", "cannot seek"
        return False
    except Exception as exc:  # any back-end's error: the input cannot be read at all
        raise ShardError(url, f"cannot read the input: {describe(exc)}") from None


def open_source(url: str, options: storage.StorageOptions, *, ranged: bool) -> Source:
    if storage.compression_of(url):
        return StreamSource(url, options)
    if storage.scheme(url) == "file":
        return LocalSource(os.path.expanduser(storage.local_path(url)))
    return RangedSource(url, options) if ranged else StreamSource(url, options)


def merged(spans: Iterable[Span]) -> Iterator[tuple[Span, list[Span]]]:
    """Requests, each with the spans it covers, in order: adjacent spans of one source whose
    gap is under MERGE_GAP are read as one request of at most MAX_REQUEST bytes."""
    request: Span | None = None
    covered: list[Span] = []
    for span in spans:
        if (
            request is not None
            and span.source == request.source
            and request.end <= span.start <= request.end + MERGE_GAP
            and span.end - request.start <= MAX_REQUEST
        ):
            request = Span(request.source, request.start, span.end)
            covered.append(span)
            continue
        if request is not None:
            yield request, covered
        request, covered = span, [span]
    if request is not None:
        yield request, covered


class RequestCount:
    """Read requests made (threads add to it): what a run reports, and the benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, count: int = 1) -> None:
        with self._lock:
            self.value += count


def fetch_spans(
    spans: Iterable[Span],
    sources: list[Source],
    urls: list[str],
    *,
    threads: int,
    requests: RequestCount | None = None,
) -> Iterator[memoryview]:
    """The bytes of each span (views of the request's buffer), in order, read by `threads`
    requests in flight."""

    def fetch(item: tuple[Span, list[Span]]) -> list[memoryview]:
        request, covered = item
        if requests is not None:
            requests.add()
        try:
            data = sources[request.source].read(request.start, request.end)
        except ShardError:
            raise
        except Exception as exc:  # any back-end's error names the input
            raise ShardError(urls[request.source], f"cannot read: {describe(exc)}") from None
        view = memoryview(data)  # slices share the buffer: no copy per sample
        return [view[s.start - request.start : s.end - request.start] for s in covered]

    for pieces in ordered_map(fetch, merged(spans), threads=threads):
        yield from pieces
