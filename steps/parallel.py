"""An order-preserving parallel map over a stream, with a bounded number of items in flight.

Two kinds of workers. Threads share the process: cheap to start, nothing copied, but every
step that holds the GIL (Python glue, numpy's small calls, fpng) runs one at a time, so two
threads stay well short of two cores. Worker processes (forked, Linux) have no GIL to share;
each item and each result is pickled through a pipe instead (for the seed recipe about 150 kB
in and 1 MB out a sample, small next to the work). The caller keeps the order and does the
writing, so the output is the same bytes whatever the kind or number of workers.
At most `window` items are held at once, whatever the length of the stream: this is what
keeps memory flat on a 2 GB shard. benchmarks/README.md has the measured scaling.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import multiprocessing
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_PR_SET_PDEATHSIG = 1
# In a worker process: the function it applies, the transfer and the shared slots.
_work: tuple[Callable[[Any], Any], Transfer | None, list[mmap.mmap]] | None = None


def processes_available() -> bool:
    """Worker processes need fork: the function (a pipeline with resolved plugins) is
    inherited, not pickled, and a worker starts without importing anything again."""
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def ordered_map(
    function: Callable[[In], Out],
    items: Iterable[In],
    *,
    threads: int,
    window: int | None = None,
    processes: bool = False,
    transfer: Transfer | None = None,
) -> Iterator[Out]:
    """Yield function(item) for each item, in input order, computed by `threads` workers:
    threads, or with `processes` (where available) forked worker processes.

    With processes and a `transfer`, each result's large payload travels through memory
    shared with the workers instead of a pipe (see Transfer); a result yielded then refers to
    that memory until the next result is asked for."""
    if threads <= 1:
        for item in items:
            yield function(item)
        return
    window = window or 2 * threads
    if processes and processes_available():
        yield from _in_processes(function, items, threads, window, transfer)
        return
    pending: deque[Future[Out]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shardflow") as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class Transfer(Generic[Out]):
    """How a result's large payload crosses from a worker process to the parent without
    pickling: `pack` (in the worker) copies it into a shared buffer and returns a small
    result that refers to it, or None when it does not fit (the result is then pickled
    whole); `unpack` (in the parent) turns the small result back into one whose payload is
    a view of that buffer."""

    slot_bytes: int = 32 << 20

    def pack(self, result: Out, buffer: memoryview) -> Any:
        raise NotImplementedError

    def unpack(self, packed: Any, buffer: memoryview) -> Out:
        raise NotImplementedError


def _in_processes(
    function: Callable[[In], Out],
    items: Iterable[In],
    workers: int,
    window: int,
    transfer: Transfer | None,
) -> Iterator[Out]:
    # One slot of shared memory per item in flight, mapped before the fork so every worker
    # sees the same pages; anonymous, so nothing is left behind. Untouched pages cost nothing,
    # and the pages a slot used are reused by the next item given that slot.
    slots = [mmap.mmap(-1, transfer.slot_bytes) for _ in range(window)] if transfer else []
    # SIGTERM or Ctrl-C during the fork would run Python's handler inside fork's callbacks,
    # where its exception is printed and dropped: the step would go on as if not told to
    # stop. So they wait, blocked, until every worker exists (the first submit forks them
    # all), then arrive as usual.
    stop = {signal.SIGTERM, signal.SIGINT}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(function, transfer, slots),  # inherited through fork, never pickled
        )
        pool.submit(int).result()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    free = deque(range(window))
    pending: deque[tuple[Future[tuple[bool, Out]], int]] = deque()

    def finish() -> Out:
        future, slot = pending.popleft()
        packed, result = future.result()
        free.append(slot)  # reused only after the caller asks for the next result
        if packed:
            assert transfer is not None
            return transfer.unpack(result, memoryview(slots[slot]))
        return result

    with pool:
        try:
            for item in items:
                slot = free.popleft()
                pending.append((pool.submit(_call_in_worker, item, slot), slot))
                if len(pending) >= window - 1:  # keep a slot for the result being written
                    yield finish()
            while pending:
                yield finish()
        finally:
            for future, _ in pending:
                future.cancel()


def _start_worker(
    function: Callable[[Any], Any], transfer: Transfer | None, slots: list[mmap.mmap]
) -> None:
    """In a new worker process: remember the function; leave SIGTERM and Ctrl-C to the parent
    (it stops the pool and cleans up), and die with the parent if it is killed outright."""
    global _work
    _work = (function, transfer, slots)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    with contextlib.suppress(OSError, AttributeError):  # not Linux's libc: no such call
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _call_in_worker(item: Any, slot: int) -> tuple[bool, Any]:
    assert _work is not None, "not in a worker process"
    function, transfer, slots = _work
    result = function(item)
    if transfer is not None:
        packed = transfer.pack(result, memoryview(slots[slot]))
        if packed is not None:
            return True, packed
    return False, result
