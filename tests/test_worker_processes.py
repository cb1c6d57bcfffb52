"""The worker-process pool (steps/worker_processes.py): order, errors, a worker's death,
items larger than a slot, and no worker left behind when the caller stops early."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shardflow.steps.parallel import processes_available
from shardflow.steps.worker_processes import Transfer, WorkerDied, map_in_processes

from helpers import good_shard, killing_recipe, run_cli, sample_members, write_tar

KEY_OF_FIFTH = f"{4:016x}"  # good_shard's keys
pytestmark = pytest.mark.skipif(
    not processes_available(), reason="worker processes need fork (Linux)"
)


def test_items_larger_than_a_slot_travel_through_files_that_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    items = [bytes([n]) * (n * 1000) for n in range(1, 30)]  # slots of 8 kB: most overflow
    done = list(map_in_processes(lambda b: (len(b), os.getpid()), items, 2, 5, slot_bytes=8192))
    assert [n for n, _ in done] == [len(b) for b in items]
    assert len({pid for _, pid in done}) == 2 and os.getpid() not in {pid for _, pid in done}
    assert list(tmp_path.iterdir()) == []
    stopped = map_in_processes(len, items, 2, 5, slot_bytes=8192)
    assert next(stopped) == 1000
    stopped.close()  # items dealt but never read: their files go too
    assert list(tmp_path.iterdir()) == []


def test_large_items_and_large_results_at_once_do_not_deadlock() -> None:
    """Both directions too large for the shared slots, one worker: the parent must never wait
    to hand an item to a worker that waits for the parent to take its result."""
    code = (
        "from shardflow.steps.worker_processes import map_in_processes\n"
        "items = [bytes(300_000)] * 12\n"
        "done = list(map_in_processes(lambda b: b + b, items, 1, 4, slot_bytes=1024))\n"
        "assert [len(d) for d in done] == [600_000] * 12\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


class _Upper(Transfer[bytes]):
    slot_bytes = 1 << 16

    def pack(self, result: bytes, buffer: memoryview) -> tuple[int, int] | None:
        if len(result) > len(buffer):
            return None
        buffer[: len(result)] = result
        return (0, len(result))

    def unpack(self, packed: tuple[int, int], buffer: memoryview) -> bytes:
        return bytes(buffer[packed[0] : packed[1]]) + b"!"  # "!": it came through the slot


def test_results_come_back_through_shared_memory_or_whole() -> None:
    items = [b"a" * 10, b"b" * (1 << 17), b"c" * 20]  # the second does not fit a slot
    done = list(map_in_processes(bytes.upper, items, 2, 3, transfer=_Upper()))
    assert done == [b"A" * 10 + b"!", b"B" * (1 << 17), b"C" * 20 + b"!"]


def _fails_on_three(n: int) -> int:
    if n == 3:
        raise ValueError(f"item {n} is bad")
    return n


def test_an_exception_in_a_worker_reaches_the_caller() -> None:
    results = map_in_processes(_fails_on_three, range(8), 2, 4)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3 is bad"):
        next(results)
    assert multiprocessing.active_children() == []


def _killed_on_five(n: int) -> int:
    if n == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


def test_a_killed_worker_is_reported_not_waited_for() -> None:
    results = map_in_processes(_killed_on_five, range(10), 2, 4)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(WorkerDied, match="killed by SIGKILL"):
        next(results)
    assert multiprocessing.active_children() == []


def test_stopping_early_leaves_no_worker_behind() -> None:
    results = map_in_processes(lambda n: n * n, range(1000), 2, 5)
    assert next(results) == 0
    results.close()
    assert multiprocessing.active_children() == []


def test_a_worker_killed_mid_shard_fails_the_step_with_137_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    """In a pod, the out-of-memory killer picks the largest process, often a worker: the step
    exits 137 (Argo's retry then doubles the memory), names the shard, and leaves no output."""
    recipe = killing_recipe(tmp_path, KEY_OF_FIFTH)
    source = good_shard(tmp_path / "in.tar", count=9)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "augment", source, out / "out.tar", "--recipe", recipe, "--plugins", "killer",
        "--threads", "2", "--parallel", "processes",
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 137, result.stderr
    assert f"in.tar: key {KEY_OF_FIFTH!r}: a worker process" in result.stderr
    assert "killed by SIGKILL" in result.stderr
    assert list(out.iterdir()) == []


def test_a_worker_killed_while_writing_a_whole_shard_fails_that_shard_only(
    tmp_path: Path,
) -> None:
    """Two shards, two workers, each writing a whole shard: the killed worker's shard fails
    (137, nothing published), the other is written."""
    fatal = f"a{4:015x}"
    recipe = killing_recipe(tmp_path, fatal)
    keys = [f"a{index:015x}" for index in range(9)]  # only this shard holds the fatal key
    write_tar(tmp_path / "in-0.tar", [m for k in keys for m in sample_members(k, seed=1)])
    good_shard(tmp_path / "in-1.tar", count=9)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "augment", tmp_path / "in-{0..1}.tar", out / "out-{0..1}.tar", "--recipe", recipe,
        "--plugins", "killer", "--threads", "2", "--parallel", "processes",
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 137, result.stderr
    assert "in-0.tar: not finished: a worker process" in result.stderr
    # A process killed outright cannot clean up: its hidden temporary file stays (README).
    published = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert published == ["out-1.manifest.json", "out-1.tar"]
