"""Shards for the reshard tests: small text samples with known keys, and readers of tars."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from helpers import write_tar


def text_shard(path: Path, keys: list[str], *, size: int = 700) -> Path:
    """A shard of `keys`, each a .txt of `size` seeded bytes and a .json."""
    members = []
    for key in keys:
        body = hashlib.sha256(key.encode()).digest() * (size // 32 + 1)
        members.append((f"{key}.txt", body[:size]))
        members.append((f"{key}.json", json.dumps({"key": key}).encode()))
    return write_tar(path, members)


def make_inputs(root: Path, shards: int, per_shard: int, **kwargs) -> str:
    for shard in range(shards):
        keys = [f"s{shard:03d}-{i:05d}" for i in range(per_shard)]
        text_shard(root / f"in-{shard:03d}.tar", keys, **kwargs)
    return str(root / f"in-{{000..{shards - 1:03d}}}.tar")


def members_of(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def keys_of(path: Path) -> list[str]:
    return list(dict.fromkeys(name.partition(".")[0] for name, _ in members_of(path)))


def outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar"))
