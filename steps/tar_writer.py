"""A deterministic tar writer that hashes what it writes.

Same input, same recipe, same bytes: every member gets mtime 0, owner 0:0 with empty names,
mode 0444, and GNU format (long names use a GNU long-name header, never a per-member PAX
header). The size and sha256 of the archive are computed on the way out, so the manifest
can state them without reading the shard back.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from typing import Any, BinaryIO

from .samples import written_name_reason


class UnsafeMemberName(ValueError):
    """A member name that readers would refuse or misread: the shard must not be published."""


class HashingWriter:
    """A write-only file object that forwards to `sink` and keeps a running sha256 and size."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._sink.write(data)
        self._sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._sink.flush()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


class Pieces:
    """Member data held as several buffers (a PNG's header, its compressed data and its
    trailer): written one after another, never joined, so a megabyte-sized member is not
    copied once more on its way to the tar. `len()` is the member's size in bytes."""

    __slots__ = ("parts",)

    def __init__(self, *parts: bytes | bytearray | memoryview) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pieces):
            other = bytes(other)
        return isinstance(other, bytes | bytearray) and bytes(self) == other

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (Pieces, self.parts)


MemberData = bytes | bytearray | memoryview | Pieces


class TarWriter:
    """Writes one tar archive, members in the order given (as webdataset's TarWriter; its
    ShardWriter rolls over to new shards, this never does); `close()` returns (size, sha256)
    of the archive.

    The archive is what `tarfile` writes in GNU format (the same header bytes, from
    `TarInfo.tobuf`, the same padding and end-of-archive record), but members go straight to
    the sink: no BytesIO around the data, no copy in 16 KiB pieces, one write and one hash
    update per buffer.
    """

    def __init__(self, sink: BinaryIO, *, gzipped: bool = False) -> None:
        self._out = HashingWriter(sink)
        # A `.tar.gz` output is compressed as its name says; the hash and size are those of
        # the stored bytes (what verify reads). mtime 0 and no file name keep it reproducible.
        self._gzip = (
            gzip.GzipFile(filename="", fileobj=self._out, mode="wb", compresslevel=6, mtime=0)
            if gzipped
            else None
        )
        self._file: Any = self._gzip or self._out
        self._offset = 0

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            self._file.write(data)
            self._offset += len(data)

    def _pad(self, size: int) -> None:
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self._write(_ZEROS[: tarfile.BLOCKSIZE - remainder])

    def add(self, name: str, data: MemberData) -> None:
        size = len(data)
        self._write(_header(name, size))
        for part in data.parts if isinstance(data, Pieces) else (data,):
            self._write(part)
        self._pad(size)

    def add_from(self, name: str, size: int, stream: BinaryIO) -> None:
        """A member of `size` bytes copied from `stream` in pieces, never held whole (OSError
        if the stream ends early, as tarfile raises)."""
        self._write(_header(name, size))
        left = size
        while left > 0:
            piece = stream.read(min(left, _COPY_PIECE))
            if not piece:
                raise OSError("unexpected end of data")
            self._write(piece)
            left -= len(piece)
        self._pad(size)

    def close(self) -> tuple[int, str]:
        self._write(_ZEROS[: 2 * tarfile.BLOCKSIZE])
        remainder = self._offset % tarfile.RECORDSIZE
        if remainder:
            self._write(_ZEROS[: tarfile.RECORDSIZE - remainder])
        if self._gzip is not None:
            self._gzip.close()  # writes the gzip trailer; the sink stays open
        self._out.flush()
        return self._out.size, self._out.sha256


_ZEROS = bytes(tarfile.RECORDSIZE)
_COPY_PIECE = 1 << 20


def _header(name: str, size: int) -> bytes:
    return _member_info(name, size).tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    # The last defence: recipes and operations check names earlier, with better messages.
    reason = written_name_reason(name)
    if reason is not None:
        raise UnsafeMemberName(f"refusing to write member {name!r}: {reason}")
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
