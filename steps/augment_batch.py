"""The shards of an augment batch, spread over the step's workers.

Two ways to use several cores, chosen by the batch's size:

- whole shards, one per worker process at a time: nothing crosses between processes per
  sample, so it costs no more CPU than one process per core (benchmarks/README.md, "Two
  cores"). Each shard is written exactly as one worker writes it alone, so the bytes do not
  depend on the parallelism.
- one shard over all workers, sample by sample (augment.py with parallel.ordered_map), the
  ordered writer in this process: for a batch with fewer shards than workers, and for the
  shards left over when the batch does not divide into rounds, so that the last round does
  not leave cores idle.

A worker writing a whole shard cleans up after itself when the step is stopped (SIGTERM, as
Kubernetes stops a pod, or Ctrl-C): the step asks its workers to stop and waits for them.
A worker that is killed (the out-of-memory killer picks the largest process) fails the
shards it held with exit status 137, so that Argo's retry gives the step more memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from .augment import AugmentOptions, ShardResult, augment_shard
from .parallel import processes_available
from .pipeline import Pipeline
from .progress import Progress, SharedShardProgress
from .worker_processes import WorkerDied, map_in_processes


def augment_all(
    pairs: list[tuple[str, str]],
    pipeline: Pipeline,
    options: AugmentOptions,
    progress: Progress | None = None,
) -> Iterator[ShardResult]:
    """Each shard's result, in the batch's order; a failed shard does not stop the others."""
    whole = whole_shards(len(pairs), options)
    if whole:
        yield from _shards_in_processes(pairs[:whole], pipeline, options, progress)
    for input_url, output_url in pairs[whole:]:
        result = augment_shard(input_url, output_url, pipeline, options, progress)
        if progress is not None:
            progress.shard_finished()
        yield result


def whole_shards(shards: int, options: AugmentOptions) -> int:
    """How many of the batch's first shards go whole to worker processes: full rounds of
    one shard per worker."""
    if not (options.processes and options.threads > 1 and processes_available()):
        return 0
    return shards - shards % options.threads


def _shards_in_processes(
    pairs: list[tuple[str, str]],
    pipeline: Pipeline,
    options: AugmentOptions,
    progress: Progress | None,
) -> Iterator[ShardResult]:
    alone = replace(options, threads=1, processes=False)
    shared = SharedShardProgress(len(pairs))
    received = 0

    def write(position_and_pair: tuple[int, tuple[str, str]]) -> ShardResult:
        position, (input_url, output_url) = position_and_pair
        counter = shared.for_shard(position) if progress is not None else None
        return augment_shard(input_url, output_url, pipeline, alone, counter)

    def killed(position_and_pair: tuple[int, tuple[str, str]], death: WorkerDied) -> ShardResult:
        _, (input_url, output_url) = position_and_pair
        return ShardResult.not_finished(input_url, output_url, death)

    def show() -> None:
        assert progress is not None
        progress.show_running(*shared.totals(range(received, len(pairs))))

    results = map_in_processes(
        write,
        enumerate(pairs),
        options.threads,
        2 * options.threads + 1,  # each worker's next shard queued behind its current one
        workers_clean_up=True,
        on_death=killed,
        waiting=show if progress is not None else None,
    )
    with contextlib.closing(results):  # workers stopped now, also on failure
        for result in results:
            received += 1
            if progress is not None:
                progress.shard_finished()
                show()
            yield result
