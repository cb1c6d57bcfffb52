"""Forked worker processes that apply one function to a stream of items, in order.

Why not `concurrent.futures.ProcessPoolExecutor`: for items that take a few milliseconds each,
its machinery is a real share of the work. Every item becomes a future, crosses two queues and
two helper threads in the parent, and those threads take the GIL from the thread that reads
and writes the shard, so two workers on two cores fell well short of twice one
(benchmarks/README.md, "Two cores"). Here the parent has no helper thread at all:

- each worker has its own pair of pipes, and items are dealt round-robin, so worker i % N
  holds item i and the results come back in order by reading the workers in turn (no
  futures, no reordering);
- an item (pickled) and its result's large payload travel through shared memory: one slot of
  anonymous shared memory per item in flight, mapped before the fork, so only a few bytes
  (which slot, how long) go through the pipes and no write to a pipe ever waits for a busy
  worker (an item larger than its slot goes through a file the worker removes);
- the workers are forked once, inherit the function (never pickled: a pipeline with resolved
  plugins), and serve every item of the stream.

A worker that dies (out of memory, killed) is reported by the end of its result pipe, which
only that worker held open.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import multiprocessing
import os
import pickle
import signal
import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from .signals import stop_signals_raise, unless_stopped

Out = TypeVar("Out")

_PR_SET_PDEATHSIG = 1
_TASK = struct.Struct("<IQ")  # slot, length of the pickled item in it
_STOP = (signal.SIGTERM, signal.SIGINT)
_JOIN_SECONDS = 10
_CLEAN_UP_SECONDS = 60  # an upload being aborted talks to the storage
_WAIT_SECONDS = 0.5


class WorkerDied(RuntimeError):
    """A worker process ended without answering (killed, out of memory, crashed);
    `signal_number` is the signal that ended it, if one did, and `item` what it was given."""

    def __init__(self, message: str, signal_number: int | None) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.item: Any = None


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


# What a worker sends back: the result pickled whole, packed by a Transfer, or an exception.
_WHOLE, _PACKED, _RAISED = range(3)


def map_in_processes(
    function: Callable[[Any], Out],
    items: Iterable[Any],
    workers: int,
    window: int,
    *,
    transfer: Transfer[Out] | None = None,
    slot_bytes: int = 32 << 20,
    workers_clean_up: bool = False,
    on_death: Callable[[Any, WorkerDied], Out] | None = None,
    waiting: Callable[[], None] | None = None,
) -> Generator[Out, None, None]:
    """Yield function(item) for each item, in order, computed by `workers` forked processes,
    with at most `window` items in flight (one of them the result the caller is using: a
    result may refer to shared memory until the next one is asked for).

    - workers_clean_up: the function leaves something behind when cut short (a shard being
      written), so a worker turns SIGTERM and Ctrl-C into an exception as the parent does,
      and when the parent stops, it asks the workers to stop and waits for them to clean up
      before it kills them. Otherwise workers ignore those signals and are killed at once.
    - on_death: a worker that dies (killed) takes the item it was working on and those
      queued for it: each becomes on_death(item, error), the other workers go on with the
      rest. Without it, WorkerDied is raised and the others are killed.
    - waiting: called about twice a second while the parent waits for a result (progress).
    """
    window = max(window, workers + 1)
    out_bytes = transfer.slot_bytes if transfer is not None else 0
    # Anonymous shared memory: nothing is left behind, untouched pages cost nothing, and a
    # slot's pages are reused by every later item given that slot.
    inbox = [mmap.mmap(-1, slot_bytes) for _ in range(window)]
    outbox = [mmap.mmap(-1, out_bytes) for _ in range(window)] if out_bytes else []
    pool = _Pool(function, transfer, inbox, outbox, workers, workers_clean_up)
    free = deque(range(window))
    pending: deque[tuple[int, int, Any]] = deque()  # (worker, slot, item), oldest first
    deaths: dict[int, WorkerDied] = {}

    def died(worker: int, item: Any, death: WorkerDied) -> Out:
        deaths[worker] = death
        if on_death is None:
            death.item = item  # what it was working on
            raise death
        return on_death(item, death)

    def oldest() -> Out:
        worker, slot, item = pending.popleft()
        if worker in deaths:  # queued for a worker that died before it
            result = died(worker, item, deaths[worker])
        else:
            try:
                result = pool.receive(worker, slot, waiting)
            except WorkerDied as death:
                result = died(worker, item, death)
        pool.forget_spilled(slot)
        free.append(slot)  # refilled only after the caller asks for the next result
        return result

    dealt = 0

    def deal(item: Any, slot: int) -> None:
        nonlocal dealt
        while True:
            live = [w for w in range(workers) if w not in deaths]
            worker = live[dealt % len(live)] if live else next(iter(deaths))
            dealt += 1
            if worker in deaths:  # every worker is dead: its on_death result, in order
                break
            try:
                pool.send(worker, slot, item)
                break
            except WorkerDied as death:  # it died on its oldest item: reported in turn
                if on_death is None:
                    death.item = next((i for w, _, i in pending if w == worker), item)
                    raise death from None
                deaths[worker] = death
        pending.append((worker, slot, item))

    try:
        for item in items:
            deal(item, free.popleft())
            if len(pending) >= window - 1:  # keep a slot for the result being used
                yield unless_stopped(oldest())
        while pending:
            yield unless_stopped(oldest())
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.close()


class _Pool:
    """The worker processes and the parent's ends of their pipes."""

    def __init__(
        self,
        function: Callable[[Any], Any],
        transfer: Transfer | None,
        inbox: list[mmap.mmap],
        outbox: list[mmap.mmap],
        workers: int,
        workers_clean_up: bool,
    ) -> None:
        self.inbox, self.outbox, self.transfer = inbox, outbox, transfer
        self.workers_clean_up = workers_clean_up
        self.spilled: dict[int, str] = {}  # slot: the file holding its item
        self.tasks: list[Connection] = []
        self.results: list[Connection] = []
        self.processes: list[Any] = []
        context = multiprocessing.get_context("fork")
        # SIGTERM or Ctrl-C during a fork would run Python's handler in the middle of it; they
        # wait, blocked, until every worker exists, then arrive as usual.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
        # The objects that exist now move out of the collector's reach, so a collection in a
        # worker does not write to (and copy) every page of the parent's heap it shares.
        gc.freeze()
        try:
            for _ in range(workers):
                task_reader, task_writer = context.Pipe(duplex=False)
                result_reader, result_writer = context.Pipe(duplex=False)
                process = context.Process(
                    target=_serve,
                    args=(function, transfer, inbox, outbox, task_reader, result_writer),
                    kwargs={"clean_up": workers_clean_up},
                    name="shardflow-worker",
                    daemon=True,
                )
                process.start()
                # Only the worker keeps its ends: its death closes the result pipe, and the
                # workers forked next do not inherit them.
                task_reader.close()
                result_writer.close()
                self.tasks.append(task_writer)
                self.results.append(result_reader)
                self.processes.append(process)
        except BaseException:
            self.stop()
            self.close()
            raise
        finally:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def send(self, worker: int, slot: int, item: Any) -> None:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        buffer = self.inbox[slot]
        if len(data) <= len(buffer):
            buffer[: len(data)] = data
            message = _TASK.pack(slot, len(data))
        else:
            # Larger than a slot (rare): through a file the worker removes once read. Not
            # through the pipe: the parent would wait for a worker that may itself be waiting
            # for the parent to take a result too large for its slot.
            with tempfile.NamedTemporaryFile(prefix="shardflow-item-", delete=False) as file:
                file.write(data)
            self.spilled[slot] = file.name
            message = _TASK.pack(slot, len(data)) + os.fsencode(file.name)
        try:
            self.tasks[worker].send_bytes(message)
        except OSError:  # its end of the pipe is closed: it has died
            raise _death(self.processes[worker]) from None

    def forget_spilled(self, slot: int) -> None:
        """The item of `slot` is answered (or will never be): its file, if any, is gone."""
        name = self.spilled.pop(slot, None)
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def receive(self, worker: int, slot: int, waiting: Callable[[], None] | None) -> Any:
        results = self.results[worker]
        try:
            while waiting is not None and not results.poll(_WAIT_SECONDS):
                waiting()
            kind, payload = pickle.loads(results.recv_bytes())
        except (EOFError, OSError):
            raise _death(self.processes[worker]) from None
        if kind == _RAISED:
            raise payload
        if kind == _PACKED:
            assert self.transfer is not None
            return self.transfer.unpack(payload, memoryview(self.outbox[slot]))
        return payload

    def stop(self) -> None:
        """The parent is failing or was told to stop: nothing a worker has not returned is
        wanted. Workers that clean up are asked (SIGTERM) and given time; others are killed."""
        alive = [process for process in self.processes if process.is_alive()]
        if self.workers_clean_up:
            for process in alive:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + _CLEAN_UP_SECONDS
            for process in alive:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in alive:
            if process.is_alive():
                process.kill()

    def close(self) -> None:
        for connection in self.tasks:
            # An empty message ends a worker's loop. (Not the end of the pipe: the workers
            # forked later hold copies of the earlier workers' task pipes.)
            with contextlib.suppress(OSError):
                connection.send_bytes(b"")
            connection.close()
        for process in self.processes:
            process.join(_JOIN_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.results:
            connection.close()
        for slot in list(self.spilled):  # items never read: the parent stopped early
            self.forget_spilled(slot)


def _death(process: Any) -> WorkerDied:
    process.join(_JOIN_SECONDS)  # it has closed its pipe: it is ending, or has ended
    code = process.exitcode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
        if -code == signal.SIGKILL:
            how += " (often the out-of-memory killer: more memory or fewer workers)"
    else:
        how = f"ended with exit code {code}"
    message = f"a worker process (pid {process.pid}) {how}"
    return WorkerDied(message, -code if code is not None and code < 0 else None)


def _serve(
    function: Callable[[Any], Any],
    transfer: Transfer | None,
    inbox: list[mmap.mmap],
    outbox: list[mmap.mmap],
    tasks: Connection,
    results: Connection,
    *,
    clean_up: bool,
) -> None:
    """A worker's life: items in, results out, until the parent says there are no more."""
    with contextlib.suppress(OSError, AttributeError):  # die with the parent if it is killed
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if not clean_up:
        # The parent stops the workers and cleans up its own output: Ctrl-C (sent to the
        # whole process group) is the parent's alone, and SIGTERM simply ends a worker (as
        # multiprocessing's clean-up at exit expects: it terminates daemonic children).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Otherwise the forked handlers are the parent's: SIGTERM raises Terminated here too, so
    # the item's own clean-up runs (a shard's temporary file removed, its upload aborted).
    stopping = stop_signals_raise() if clean_up else contextlib.nullcontext()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP)
    with contextlib.suppress(KeyboardInterrupt), stopping:
        while True:
            try:
                message = tasks.recv_bytes()
            except EOFError:
                return
            if not message:  # the parent has no more items
                return
            slot, length = _TASK.unpack_from(message)
            if len(message) > _TASK.size:  # spilled to a file (Pool.send)
                name = os.fsdecode(message[_TASK.size :])
                with open(name, "rb") as file:
                    os.unlink(name)
                    item = pickle.load(file)
            else:
                item = pickle.loads(memoryview(inbox[slot])[:length])
            reply = _answer(function, transfer, item, outbox[slot] if outbox else None)
            try:
                results.send_bytes(reply)
            except OSError:  # the parent stopped listening
                return


def _answer(
    function: Callable[[Any], Any],
    transfer: Transfer | None,
    item: Any,
    slot: mmap.mmap | None,
) -> bytes:
    try:
        result = function(item)
        if transfer is not None and slot is not None:
            packed = transfer.pack(result, memoryview(slot))
            if packed is not None:
                return pickle.dumps((_PACKED, packed), protocol=pickle.HIGHEST_PROTOCOL)
        return pickle.dumps((_WHOLE, result), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # the parent raises it, as if it had called the function
        try:
            return pickle.dumps((_RAISED, exc), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            failure = RuntimeError(f"{type(exc).__name__}: {exc}")
            return pickle.dumps((_RAISED, failure), protocol=pickle.HIGHEST_PROTOCOL)
