"""SIGTERM handled like Ctrl-C, so a stopped step cleans up instead of vanishing.

Kubernetes stops a pod (deletion, eviction, `argo stop`) with SIGTERM, whose default action
ends the process at once: a `.partial` file stays on disk, an S3 multipart upload stays open,
and `shardflow run`'s worker processes are orphaned and go on publishing. Raising an exception
instead runs the same clean-up paths as Ctrl-C (temporary files removed, uploads aborted,
worker processes stopped and waited for). After the first signal further SIGTERM/SIGINT are
ignored, so a second one cannot cut that clean-up short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TypeVar

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every clean-up path for Ctrl-C covers it too
    (and `except Exception` in a batch loop does not swallow it)."""


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated and SIGINT KeyboardInterrupt; the previous
    handlers are back afterwards (main() also runs inside test processes)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; signals are delivered there anyway
        return
    previous = {number: signal.getsignal(number) for number in _STOP_SIGNALS}
    for number in _STOP_SIGNALS:
        signal.signal(number, _on_signal)
    try:
        yield
    finally:
        _received.clear()
        for number, handler in previous.items():
            signal.signal(number, handler)


_received: list[int] = []  # the stop signal that arrived, once handled


def raise_if_stopped() -> None:
    """Raise again for a stop signal whose exception was lost: Python drops an exception
    raised in a finalizer (`__del__`, a collected generator), and a handler can run inside
    one. Called for every result of an ordered map (unless_stopped), so a step stops at its
    next sample or shard whatever happened to the first exception."""
    if _received:
        _raise_for(_received[0])


T = TypeVar("T")


def unless_stopped(value: T) -> T:
    """`value`, after raise_if_stopped(): how a stream of results (parallel.ordered_map,
    worker_processes) stops at its next result after a stop signal, even a dropped one."""
    raise_if_stopped()
    return value


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for number in _STOP_SIGNALS:
        # Not SIG_IGN: a signal already pending when the handler changes would then make
        # Python raise "Signal N ignored due to race condition" in the middle of the clean-up.
        signal.signal(number, _after_the_first)
    _received[:] = [signum]
    _raise_for(signum)


def _after_the_first(signum: int, frame: FrameType | None) -> None:
    """Later stop signals change nothing: the clean-up the first one started goes on."""


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()
