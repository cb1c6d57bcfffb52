"""JSON Lines read as a stream: the reshard's inventory parts and plan can be far larger than
memory should hold, one line (one input, one output) at a time is what a reader needs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from . import storage

CHUNK = 1 << 20


def lines(stream: BinaryIO) -> Iterator[bytes]:
    """The non-empty lines of a byte stream, without their newline; a line longer than a
    chunk is joined once, from its pieces (never re-scanned)."""
    pieces: list[bytes] = []
    while chunk := stream.read(CHUNK):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            pieces.append(chunk[start:end])
            line = b"".join(pieces)
            pieces = []
            if line:
                yield line
            start = end + 1
        if start < len(chunk):
            pieces.append(chunk[start:])
    line = b"".join(pieces)
    if line:
        yield line


def read_json_lines(url: str, options: storage.StorageOptions) -> Iterator[Any]:
    """Each line of the object at `url`, decoded, streamed."""
    with storage.open_input(url, options, compression=None) as stream:
        for line in lines(stream):
            yield json.loads(line)
