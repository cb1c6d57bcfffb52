"""The reshard's counting pass: every input's samples (keys, member offsets and sizes).

A reshard task writes one output from samples scattered over many inputs, so before any is
written the plan must know where each sample lies. An input with a shardflow manifest of its
size is described by the manifest (`shard_index.index_from_manifest`, no read); any other by
its tar headers only, member data skipped by seeking (`index_cli.index_shard`: ranged reads
on object stores). The version of each input (its identity: size and ETag or mtime) is
recorded too; a writer refuses an input that has changed since (its offsets would be wrong).

The inventory is written in parts, one per batch of inputs (the Argo count fan-out), as JSON
Lines: one line per input, `{"input": position, "url", "identity", "source", "samples":
[[key, [[name, offset, size], ...]], ...]}`. Each part is published atomically, so a part
exists only when its batch was counted whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from . import storage
from .errors import ShardError
from .index_cli import index_shard
from .jsonl import read_json_lines
from .pairing import Batch, task_count
from .parallel import ordered_map
from .samples import split_member_name
from .storage_faults import describe

PART_FORMAT = "shardflow.reshard-inventory/1"


def part_url(work: str, task: int) -> str:
    return f"{work.rstrip('/')}/inventory/part-{task:06d}.jsonl"


def count_input(position: int, url: str, options: storage.StorageOptions) -> dict[str, Any]:
    """One input's line of the inventory; ShardError when it cannot be read."""
    try:
        identity = storage.current_identity(url, options)
        index = index_shard(url, options)
    except ShardError:
        raise
    except Exception as exc:  # any back-end's error: this input, named
        raise ShardError(url, f"cannot count the samples: {describe(exc)}") from None
    samples = [
        [_key(sample[0].name), [[m.name, m.offset, m.size] for m in sample]]
        for sample in index.samples
    ]
    return {
        "input": position,
        "url": url,
        "identity": identity,
        "source": index.source,
        "samples": samples,
    }


def _key(name: str) -> str:
    parts = split_member_name(name)
    assert parts is not None  # group_members keeps only names with a key and an extension
    return parts[0]


def count_batch(
    inputs: list[str],
    task: int,
    per_task: int,
    work: str,
    options: storage.StorageOptions,
    *,
    threads: int,
) -> tuple[str, int]:
    """Count batch `task` of the inputs and publish its part; (its URL, samples counted).
    Raises the first ShardError (a part is all of its batch or nothing)."""
    batch = Batch(task, per_task).of(inputs)
    first = task * per_task
    url = part_url(work, task)
    samples = 0
    # ordered_map keeps a few inputs' samples in memory at a time, whatever the batch size.
    lines = ordered_map(
        lambda item: count_input(first + item[0], item[1], options),
        enumerate(batch),
        threads=threads,
    )
    try:
        with storage.publish_atomically(url, options) as stream:
            for line in lines:
                samples += len(line["samples"])
                stream.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
    except OSError as exc:
        raise ShardError(url, f"cannot write the inventory part: {exc}") from None
    return url, samples


def read_inventory(
    work: str, inputs: list[str], per_task: int, options: storage.StorageOptions
) -> Iterator[dict[str, Any]]:
    """Every input's line, in INPUTS order, from the parts; ShardError naming a part that is
    missing or describes other inputs (a stale part of another run)."""
    for task in range(task_count(len(inputs), per_task)):
        url = part_url(work, task)
        expected = inputs[task * per_task : (task + 1) * per_task]
        if not storage.exists(url, options):
            raise ShardError(url, "missing: the count of this batch of inputs has not run")
        described = 0
        for line in read_json_lines(url, options):
            if described >= len(expected) or line.get("url") != expected[described]:
                wanted = expected[described] if described < len(expected) else "nothing more"
                raise ShardError(
                    url, f"describes {line.get('url')!r}, not {wanted!r}: a part of another run"
                )
            described += 1
            yield line
        if described != len(expected):
            raise ShardError(
                url,
                f"describes {described} inputs, not the {len(expected)} of its batch: a part "
                "of another run",
            )
