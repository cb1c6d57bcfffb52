"""The kinds of failure, and the exit status each one maps to.

Keeping them apart is what lets a batch go on after one bad shard, lets a bad sample be
counted instead of killing its shard, and lets a typo in a parameter fail in a second,
before any byte is read. The exit status also tells Argo's retry expression whether another
attempt can help: 1 (storage, network) may pass next time; 2 (usage) and 3 (damaged data, a
recipe that cannot apply to it) fail the same way every time, so they are never retried.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
# A worker process was killed outright (SIGKILL: in a pod, the cgroup's out-of-memory killer
# picks the largest process, often a worker). The step exits as the pod would have if its
# main process had been killed, so Argo's retry gives the next attempt twice the memory.
EXIT_KILLED = 137


class ShardflowError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = EXIT_FAILED


class UsageError(ShardflowError):
    """Bad arguments, recipe, scheme or missing extra: detected before any work is done."""

    exit_code = EXIT_USAGE


class ShardError(ShardflowError):
    """The shard as a whole cannot be processed (storage, network); nothing is published for it.

    The message is one line naming the shard, the sample key when there is one, and the cause.
    """

    def __init__(self, shard: str, cause: str, key: str | None = None) -> None:
        self.shard = shard
        self.key = key
        self.cause = cause
        where = f"{shard}: key {key!r}" if key is not None else shard
        super().__init__(f"{where}: {cause}")


class DataError(ShardError):
    """The shard's data is at fault (damaged tar, unsafe name, a sample that fails with
    --on-error fail): every attempt fails the same way, so a retry cannot help."""

    exit_code = EXIT_DATA


class SampleError(Exception):
    """One sample cannot be processed; with --on-error skip it is counted and listed by key."""

    def __init__(self, key: str, cause: str) -> None:
        self.key = key
        self.cause = cause
        super().__init__(f"key {key!r}: {cause}")
