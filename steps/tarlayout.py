"""Where each member's data lies in a shard written by `tar_writer.TarWriter`, from names and
sizes alone.

The writer is deterministic (GNU format, no PAX headers): a member is one 512-byte header, its
data padded to 512 bytes, and, when its UTF-8 name is longer than 100 bytes, a GNU long-name
header before it (one header block plus the NUL-terminated name, padded to 512). So the
manifest's member list (names and sizes, in archive order) gives every data offset: our own
outputs are indexed without reading them again.
"""

from __future__ import annotations

from collections.abc import Iterable

BLOCK = 512
USTAR_NAME_BYTES = 100  # longer names get a GNU long-name header (tarfile's rule)


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


def header_bytes(name: str) -> int:
    """Bytes of headers the writer puts before a member's data."""
    encoded = len(name.encode("utf-8"))
    if encoded <= USTAR_NAME_BYTES:
        return BLOCK
    return BLOCK + _padded(encoded + 1) + BLOCK


def data_offsets(members: Iterable[tuple[str, int]]) -> list[int]:
    """The byte offset of each member's data, in archive order."""
    offsets = []
    position = 0
    for name, size in members:
        position += header_bytes(name)
        offsets.append(position)
        position += _padded(size)
    return offsets
