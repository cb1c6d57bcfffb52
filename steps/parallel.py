"""An order-preserving parallel map over a stream, with a bounded number of items in flight.

Two kinds of workers. Threads share the process: cheap to start, nothing copied, but every
step that holds the GIL (Python glue, numpy's small calls, fpng) runs one at a time, so two
threads stay well short of two cores. Worker processes (forked, Linux) have no GIL to share;
each item and each result's payload is copied through shared memory instead
(worker_processes.py). The caller keeps the order and does the writing, so the output is the
same bytes whatever the kind or number of workers.
At most `window` items are held at once, whatever the length of the stream: this is what
keeps memory flat on a 2 GB shard. benchmarks/README.md has the measured scaling.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .signals import unless_stopped
from .worker_processes import Transfer, map_in_processes

__all__ = ["Transfer", "ordered_map", "processes_available"]

In = TypeVar("In")
Out = TypeVar("Out")


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
) -> Generator[Out, None, None]:
    """Yield function(item) for each item, in input order, computed by `threads` workers:
    threads, or with `processes` (where available) forked worker processes.

    With processes and a `transfer`, each result's large payload travels through memory
    shared with the workers instead of a pipe (see Transfer); a result yielded then refers to
    that memory until the next result is asked for."""
    if threads <= 1:
        for item in items:
            yield unless_stopped(function(item))
        return
    if processes and processes_available():
        # one item queued behind each worker's current one, and the result being written
        yield from map_in_processes(
            function, items, threads, window or 2 * threads + 1, transfer=transfer
        )
        return
    window = window or 2 * threads
    pending: deque[Future[Out]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shardflow") as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= window:
                    yield unless_stopped(pending.popleft().result())
            while pending:
                yield unless_stopped(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()

