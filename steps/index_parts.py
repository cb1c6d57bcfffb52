"""Indexing in batches: each task of an Argo fan-out indexes its batch of shards and writes a
part; one last step merges the parts into the dataset index.

A part is `PARTS/part-000007.json`: `{"format": "shardflow.index-part/1", "shards": [{url,
nsamples, filesize, from}]}`, written atomically, so a part exists only when its whole batch
was indexed. The merge expects exactly the parts and shards the same pattern and batch size
give, so a missing or stale part is named instead of leaving shards out of the index.
"""

from __future__ import annotations

import json
from typing import Any

from . import storage
from .errors import ShardError
from .pairing import task_count
from .shard_index import ShardIndex, json_bytes

PART_FORMAT = "shardflow.index-part/1"


def part_url(parts: str, task: int) -> str:
    return f"{parts.rstrip('/')}/part-{task:06d}.json"


def write_part(
    parts: str, task: int, shards: list[ShardIndex], options: storage.StorageOptions
) -> str:
    """Write one batch's counts; its URL."""
    entries = [
        {"url": s.url, "nsamples": s.nsamples, "filesize": s.filesize, "from": s.source}
        for s in shards
    ]
    url = part_url(parts, task)
    storage.write_atomically(url, json_bytes({"format": PART_FORMAT, "shards": entries}), options)
    return url


def read_parts(
    parts: str, shards: list[str], per_task: int, options: storage.StorageOptions
) -> list[ShardIndex]:
    """The counts of every shard, from the parts of all batches; ShardError naming the part
    that is missing or that describes other shards."""
    indexes: list[ShardIndex] = []
    for task, start in enumerate(range(0, len(shards), per_task)):
        url = part_url(parts, task)
        batch = shards[start : start + per_task]
        entries = _entries(url, options)
        urls = [entry.get("url") if isinstance(entry, dict) else None for entry in entries]
        if [storage.comparable_url(u) if isinstance(u, str) else u for u in urls] != [
            storage.comparable_url(u) for u in batch
        ]:
            raise ShardError(url, f"does not describe batch {task} ({batch[0]} ...): stale part?")
        for entry in entries:
            count, size = entry.get("nsamples"), entry.get("filesize")
            if not (_count(count) and _count(size)):
                raise ShardError(url, f"bad entry for {entry['url']!r}")
            source = str(entry.get("from"))
            indexes.append(ShardIndex(entry["url"], size, source=source, count=count))
    return indexes


def remove_parts(parts: str, shards: int, per_task: int, options: storage.StorageOptions) -> None:
    """Delete the parts once the index is written (they are only a hand-over)."""
    for task in range(task_count(shards, per_task)):
        storage.remove(part_url(parts, task), options)


def _entries(url: str, options: storage.StorageOptions) -> list[Any]:
    data = storage.read_bytes(url, options)
    if data is None:
        raise ShardError(url, "missing: its batch has not been indexed")
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ShardError(url, "not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != PART_FORMAT:
        raise ShardError(url, f"not a {PART_FORMAT} part")
    entries = document.get("shards")
    if not isinstance(entries, list):
        raise ShardError(url, "shards is not a list")
    return entries


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
