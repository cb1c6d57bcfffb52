"""Peak memory does not grow with the shard; progress reaches Argo's file; CPU detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardflow.steps.cpus import available_cpus, cgroup_cpu_quota, threads_for_memory
from shardflow.steps.progress import Progress

from helpers import good_shard, image_bytes, run_cli, write_tar

# Peak RSS from VmHWM, the high-water mark of this process's own memory map. Not ru_maxrss:
# Linux carries the parent's peak into a child across fork and exec, so under a large pytest
# process ru_maxrss would report pytest's size and hide any growth.
MEASURE = """
import re, sys
from shardflow.workflows.cli import main
status = main(sys.argv[1:])
with open("/proc/self/status") as stream:
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", stream.read()).group(1)) // 1024)
sys.exit(status)
"""


def peak_rss_mb(*args: str | Path) -> int:
    """Peak RSS in MB of `shardflow ARGS` run in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, args), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


def big_shard(path: Path, samples: int, member_mb: int) -> Path:
    blob = os.urandom(member_mb << 20)
    return write_tar(path, ((f"{i:08d}.bin", blob) for i in range(samples)))


def test_peak_rss_does_not_grow_with_the_shard(tmp_path: Path) -> None:
    copy = '{"ops": [{"encode": {"members": {"bin": {"format": "raw"}}}}]}'
    small = big_shard(tmp_path / "small.tar", 12, 4)  # 48 MB
    large = big_shard(tmp_path / "large.tar", 96, 4)  # 384 MB
    rss_small = peak_rss_mb(
        "augment", small, tmp_path / "a.tar", "--recipe", copy, "--threads", "2"
    )
    rss_large = peak_rss_mb(
        "augment", large, tmp_path / "b.tar", "--recipe", copy, "--threads", "2"
    )
    assert (tmp_path / "b.tar").stat().st_size > 384 << 20
    assert rss_large < rss_small + 24, (rss_small, rss_large)
    assert rss_large < 250


def test_peak_rss_with_decoding_does_not_grow_with_sample_count(tmp_path: Path) -> None:
    jpeg = image_bytes(1000, 750, quality=90)
    few = write_tar(tmp_path / "few.tar", [(f"{i:04d}.jpg", jpeg) for i in range(8)])
    many = write_tar(tmp_path / "many.tar", [(f"{i:04d}.jpg", jpeg) for i in range(48)])
    recipe = (
        '{"ops": [{"image": {}}, {"normalize": {}}, {"encode": {"members": {"png": "image"}}}]}'
    )
    rss_few = peak_rss_mb("augment", few, tmp_path / "a.tar", "--recipe", recipe, "--threads", "2")
    rss_many = peak_rss_mb(
        "augment", many, tmp_path / "b.tar", "--recipe", recipe, "--threads", "2"
    )
    assert rss_many < rss_few + 24, (rss_few, rss_many)


def many_tiny_samples(path: Path, samples: int) -> Path:
    return write_tar(
        path,
        ((f"sample-{i // 2:09d}.{('bin', 'cls')[i % 2]}", b"x" * 16) for i in range(2 * samples)),
    )


def test_peak_rss_does_not_grow_with_the_number_of_samples(tmp_path: Path) -> None:
    """The manifest's per-sample records and tarfile's per-member bookkeeping used to stay in
    memory until the shard ended (kilobytes a sample). Measured as an Argo task runs it (one
    batch): a whole local run also reads every manifest back for the dataset index."""
    copy = (
        '{"ops": [{"encode": {"members": {"bin": {"format": "raw"}, "cls": {"format": "raw"}}}}]}'
    )
    few = many_tiny_samples(tmp_path / "few.tar", 5_000)
    many = many_tiny_samples(tmp_path / "many.tar", 30_000)
    batch = ("--recipe", copy, "--threads", "2", "--task-index", "0")
    rss_few = peak_rss_mb("augment", few, tmp_path / "a.tar", *batch)
    rss_many = peak_rss_mb("augment", many, tmp_path / "b.tar", *batch)
    manifest = json.loads((tmp_path / "b.manifest.json").read_text())
    assert len(manifest["samples"]) == manifest["counts"]["written"] == 30_000
    assert manifest["samples"][-1]["members"][1] == {"name": "sample-000029999.cls", "size": 16}
    assert rss_many < rss_few + 16, (rss_few, rss_many)


def test_argo_progress_file_reaches_n_over_n(tmp_path: Path) -> None:
    for index in range(3):
        good_shard(tmp_path / f"in-{index}.tar", count=2)
    progress_file = tmp_path / "progress"
    result = run_cli(
        "augment",
        tmp_path / "in-{0..2}.tar",
        tmp_path / "out-{0..2}.tar",
        env={"ARGO_PROGRESS_FILE": str(progress_file), "SHARDFLOW_PROGRESS_INTERVAL": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert progress_file.read_text() == "300/300"


def test_progress_moves_monotonically_within_a_shard(tmp_path: Path) -> None:
    path = tmp_path / "progress"
    progress = Progress(2, bar=False, argo_file=str(path), interval=0)
    seen = [path.read_text()]
    progress.shard_started(1000)
    for done in (100, 500, 999, 1000):
        progress.advance(done, 1)
        seen.append(path.read_text())
    progress.shard_finished()
    seen.append(path.read_text())
    progress.shard_started(None)  # unknown size: stays at the shard boundary until finished
    progress.advance(10_000, 1)
    seen.append(path.read_text())
    progress.shard_finished()
    progress.close()
    seen.append(path.read_text())
    assert seen == [
        "0/200",
        "10/200",
        "50/200",
        "99/200",
        "99/200",
        "100/200",
        "100/200",
        "200/200",
    ]


def test_progress_file_is_throttled(tmp_path: Path) -> None:
    path = tmp_path / "progress"
    progress = Progress(1, bar=False, argo_file=str(path), interval=3600)
    progress.shard_started(100)
    progress.advance(50, 1)
    assert path.read_text() == "0/100"  # written at start, not again within the interval
    progress.shard_finished()
    assert path.read_text() == "100/100"  # shard ends are always written


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    assert cgroup_cpu_quota(tmp_path) == expected


def test_available_cpus_honours_the_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    assert available_cpus(tmp_path / "none") == len(os.sched_getaffinity(0))


def test_the_bar_moves_within_a_shard() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(2, bar=True, stream=stream, bar_interval=0)
    progress.shard_started(1000)
    progress.advance(400, 5)
    assert " 20%|" in stream.getvalue() and "shard 1/2, 5 samples" in stream.getvalue()
    progress.shard_finished()
    progress.shard_started(1000)
    progress.advance(500, 5)
    assert " 75%|" in stream.getvalue() and "shard 2/2, 10 samples" in stream.getvalue()
    progress.shard_finished()
    progress.close()
    assert "100%|" in stream.getvalue()


@pytest.mark.parametrize(
    ("files", "threads", "mpx", "expected"),
    [
        ({"memory.max": "max\n"}, 8, 64, 8),  # no limit
        ({}, 8, 64, 8),  # no cgroup files
        ({"memory.max": f"{4 << 30}\n"}, 8, 64, 7),  # Argo's default 4Gi at 64 Mpx
        ({"memory.max": f"{4 << 30}\n"}, 8, 16, 8),
        ({"memory.max": f"{1 << 30}\n"}, 8, 64, 1),  # never below one thread
        ({"memory/memory.limit_in_bytes": f"{2 << 30}\n"}, 16, 64, 3),  # cgroup v1
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 16, 64, 16),  # v1 unlimited
    ],
)
def test_default_threads_fit_the_memory_limit(
    tmp_path: Path, files: dict[str, str], threads: int, mpx: int, expected: int
) -> None:
    """A thread may hold an image at --max-mpx: 8 threads of 64 Mpx images took 4.1 GB, over
    a 4Gi pod limit."""
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    assert threads_for_memory(threads, mpx * 1_000_000, tmp_path) == expected


def test_worker_processes_count_their_own_memory(tmp_path: Path) -> None:
    """A forked worker has its own interpreter and buffers on top of its image: a 4Gi pod at
    64 Mpx holds 7 threads but 6 worker processes."""
    (tmp_path / "memory.max").write_text(f"{4 << 30}\n")
    assert threads_for_memory(16, 64_000_000, tmp_path) == 7
    assert threads_for_memory(16, 64_000_000, tmp_path, processes=True) == 6


def test_progress_of_shards_written_by_worker_processes(tmp_path: Path) -> None:
    """Workers writing whole shards count in shared memory; the parent shows the sum."""
    from shardflow.steps.progress import SharedShardProgress
    from shardflow.steps.worker_processes import map_in_processes

    shared = SharedShardProgress(3)

    def write_half(index: int) -> int:
        counter = shared.for_shard(index)
        counter.shard_started(1000)
        counter.advance(500, 7)
        return index

    assert list(map_in_processes(write_half, range(2), 2, 3)) == [0, 1]
    path = tmp_path / "progress"
    progress = Progress(3, bar=False, argo_file=str(path), interval=0)
    progress.shard_finished()  # shard 0 came back; 1 is half done, 2 not started
    progress.show_running(*shared.totals([1, 2]))
    assert path.read_text() == "150/300"
    assert shared.totals(range(3)) == (100, 14)
