"""An order-preserving parallel map over a stream, with a bounded number of items in flight.

Pillow releases the GIL while it decodes, resizes and encodes, so threads use all the cores
without the pickling and memory cost of processes. At most `window` items are held at once,
whatever the length of the stream: this is what keeps memory flat on a 2 GB shard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ordered_map(
    function: Callable[[In], Out], items: Iterable[In], *, threads: int, window: int | None = None
) -> Iterator[Out]:
    """Yield function(item) for each item, in input order, computed by `threads` threads."""
    if threads <= 1:
        for item in items:
            yield function(item)
        return
    window = window or 2 * threads
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
