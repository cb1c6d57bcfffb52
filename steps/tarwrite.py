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
from typing import BinaryIO

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


class ShardWriter:
    """Writes members in the order given; `close()` returns (size, sha256) of the archive."""

    def __init__(self, sink: BinaryIO, *, gzipped: bool = False) -> None:
        self._out = HashingWriter(sink)
        # A `.tar.gz` output is compressed as its name says; the hash and size are those of
        # the stored bytes (what verify reads). mtime 0 and no file name keep it reproducible.
        self._gzip = (
            gzip.GzipFile(filename="", fileobj=self._out, mode="wb", compresslevel=6, mtime=0)
            if gzipped
            else None
        )
        # Plain "w" mode writes straight through (no stream buffer whose finaliser would try to
        # flush into an aborted sink); close() adds the end-of-archive blocks and padding.
        # Members are copied in 1 MiB pieces rather than tarfile's 16 KiB: a 750 kB PNG is then
        # one write and one hash update instead of 46 (the cost: benchmarks/README.md).
        self._tar = tarfile.TarFile(
            fileobj=self._gzip or self._out,  # type: ignore[arg-type]  # write-only: "w" never reads
            mode="w",
            format=tarfile.GNU_FORMAT,
            copybufsize=1 << 20,
        )

    def add(self, name: str, data: bytes | memoryview) -> None:
        """A member from bytes in memory, written straight through: what `TarFile.addfile`
        writes (the header in the archive's format, the data, zeros to a whole block) without
        its copies of the data and of the header object."""
        tar = self._tar
        header = _member_info(name, len(data)).tobuf(tar.format, tar.encoding, tar.errors)
        padding = -len(data) % tarfile.BLOCKSIZE
        out = self._gzip or self._out  # what the TarFile writes to
        out.write(header)
        out.write(data)
        if padding:
            out.write(bytes(padding))
        tar.offset += len(header) + len(data) + padding

    def add_from(self, name: str, size: int, stream: BinaryIO) -> None:
        """A member of `size` bytes copied from `stream` in pieces, never held whole (tarfile
        raises OSError if the stream ends early)."""
        self._tar.addfile(_member_info(name, size), stream)
        self._forget_members()

    def _forget_members(self) -> None:
        # tarfile keeps every TarInfo it wrote (for reading back, which a writer never does):
        # kilobytes a sample, over a 100k-sample shard hundreds of MB.
        self._tar.members.clear()  # type: ignore[attr-defined]

    def close(self) -> tuple[int, str]:
        self._tar.close()
        if self._gzip is not None:
            self._gzip.close()  # writes the gzip trailer; the sink stays open
        self._out.flush()
        return self._out.size, self._out.sha256


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
