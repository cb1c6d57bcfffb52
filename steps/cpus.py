"""How many CPUs this process may really use, and how many threads its memory allows.

`os.cpu_count()` reports the node's cores; a pod with `limits.cpu: 2` on a 64-core node that
starts 64 threads spends its time throttled. The answer is the smallest of the CPU affinity
mask and the cgroup CPU quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), rounded up.

Each thread may hold an image of up to --max-mpx decoded, plus the copies the recipe makes
(resized, normalised, the encoder's buffers): one thread per CPU of a large node, each at the
pixel limit, is more than a pod's memory limit, and the pod is OOM-killed. So the default
thread count is also capped by the cgroup memory limit (v2 `memory.max`, v1
`memory.limit_in_bytes`) divided by that worst case.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


# Shards read at once by verify, check and index: the work waits on storage and hashes
# outside the GIL, so twice the CPUs keeps them busy; more only queues on the network.
MAX_IO_THREADS = 16
IO_THREADS_HELP = f"(default: twice the CPUs this process may use, at most {MAX_IO_THREADS})"


def io_threads(requested: int | None = None) -> int:
    """`requested`, or the default for shards read at once (IO_THREADS_HELP)."""
    return requested or min(MAX_IO_THREADS, 2 * available_cpus())


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


# Bytes a thread may hold per pixel of the largest accepted image: the decoded RGB(A) image
# and about one more full-size copy while an operation or the encoder works on it.
PEAK_BYTES_PER_PIXEL = 8
# What the process needs besides the threads' images: interpreter, libraries, buffers.
WORKER_PROCESS_MEMORY = 96 << 20  # a forked worker's own pages, with margin (README)
BASE_MEMORY = 256 << 20


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup memory limit in bytes, or None when unlimited or unknown."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            return None
        return limit if 0 < limit < 1 << 60 else None  # v1 says "unlimited" with 2**63-ish
    return None


def threads_for_memory(
    threads: int, max_pixels: int, cgroup_root: Path = CGROUP_ROOT, *, processes: bool = False
) -> int:
    """`threads`, lowered so that every worker at the pixel limit fits the memory limit (a
    worker process also has its own interpreter, libraries and buffers)."""
    limit = cgroup_memory_limit(cgroup_root)
    if limit is None:
        return threads
    per_thread = max(1, max_pixels * PEAK_BYTES_PER_PIXEL)
    if processes:
        per_thread += WORKER_PROCESS_MEMORY
    return max(1, min(threads, (limit - BASE_MEMORY) // per_thread))
