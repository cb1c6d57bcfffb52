"""A strict, streaming tar reader.

Python's tarfile (and so webdataset) reads a tar cut at a member boundary as a valid shorter
archive, and its streaming mode stops silently at a corrupt header in mid-archive. A shard read
that way loses samples without a word. This reader streams the archive once, in order, with
bounded memory, and raises `TarFormatError` for every one of those cases: bad header checksum,
short member data, missing end-of-archive blocks, data after them. Header fields are decoded
by tarfile's own `TarInfo.frombuf`; only the framing is ours.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512
_COPY_CHUNK = 1 << 20
# Zeros accepted after the end-of-archive blocks: writers pad the archive to a whole record
# (GNU tar: 20 blocks of 512 bytes by default, `-b` up to a few MiB for tape drives). Beyond
# this bound the stream is not a padded archive (a `/dev/zero` input would never end).
MAX_TRAILING_ZEROS = 8 << 20

REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_EXTENSION_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
)
# Types whose size field tarfile does not skip (it reads the next header right after theirs).
_DATALESS_TYPES = (
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
)
# Global PAX records that tarfile applies to every following member.
_GLOBAL_PAX_REFUSED = ("path", "size", "linkpath")
_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


_EXTENSION_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
)


class TarFormatError(Exception):
    """The byte stream is not a whole, well-formed tar archive."""

    def __init__(self, cause: str, *, offset: int, member: str | None = None) -> None:
        self.cause = cause
        self.offset = offset
        self.member = member
        super().__init__(cause)

    @property
    def truncated(self) -> bool:
        """The stream ended before the archive did (each such message here says so)."""
        return "truncated" in self.cause


@dataclass(frozen=True)
class TarMember:
    """One archive member as found in the stream (after long-name and PAX headers apply)."""

    name: str
    size: int
    type: bytes
    offset: int  # where its (first) header starts
    # Types of the extension headers before it (b"x" PAX, b"g" global PAX, b"L"/b"K" GNU long
    # name/link): readers that ignore them (DALI, wids) see another name or another member.
    extensions: tuple[bytes, ...] = ()

    @property
    def is_regular(self) -> bool:
        return self.type in REGULAR_TYPES

    @property
    def is_directory(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def kind(self) -> str:
        """A human name for the member's type, for error messages."""
        if self.is_regular:
            return "a regular file"
        if self.is_directory:
            return "a directory"
        return _TYPE_NAMES.get(self.type, f"a member of type {self.type!r}")


class _CountingReader:
    """Reads exact byte counts from a stream and keeps the offset; with the object's `size`
    known, skips member data by seeking (a ranged read on object stores) instead of reading."""

    def __init__(self, stream: BinaryIO, size: int | None = None) -> None:
        self._stream = stream
        self._size = size
        self.offset = 0

    def skip(self, n: int) -> int:
        """Move `n` bytes on; the count moved (fewer at the end of the object)."""
        if self._size is not None:
            moved = max(0, min(n, self._size - self.offset))
            self._stream.seek(self.offset + moved)
            self.offset += moved
            return moved
        moved = 0
        while moved < n:
            got = len(self.read(min(n - moved, _COPY_CHUNK)))
            if got == 0:
                break
            moved += got
        return moved

    def read(self, n: int) -> bytes:
        parts = []
        remaining = n
        while remaining > 0:
            chunk = self._stream.read(remaining)
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
        data = b"".join(parts) if len(parts) != 1 else parts[0]
        self.offset += len(data)
        return data


class TarReader:
    """Iterate members of a tar stream; read or skip each member's data before the next one.

    >>> for member in reader:             # doctest: +SKIP
    ...     data = reader.read_data()     # or leave it: the next iteration skips it
    """

    def __init__(self, stream: BinaryIO, *, seek_size: int | None = None) -> None:
        """`seek_size`: the object's size, for a seekable stream whose member data is to be
        skipped by seeking (header-only reads); by default every byte is read."""
        self._in = _CountingReader(stream, seek_size)
        self._pending: TarMember | None = None  # member whose data has not been consumed
        self._last_name: str | None = None  # for error messages: "after <name>"

    @property
    def offset(self) -> int:
        return self._in.offset

    def __iter__(self) -> Iterator[TarMember]:
        while True:
            self._finish_pending()
            member = self._next_member()
            if member is None:
                return
            if member.is_regular:
                self._pending = member
            else:
                self._pending = member if member.size else None
            yield member

    def read_data(self) -> bytes:
        """The current member's data; raises TarFormatError if the archive ends inside it."""
        member = self._pending
        if member is None:
            raise RuntimeError("read_data() called twice or before the first member")
        self._pending = None
        data = self._in.read(member.size)
        if len(data) != member.size:
            raise self._truncated(member, len(data))
        self._skip_padding(member)
        return data

    def iter_data(self, chunk: int = _COPY_CHUNK) -> Iterator[bytes]:
        """The current member's data in chunks of at most `chunk` bytes, never held whole
        (hashing a large member); raises TarFormatError if the archive ends inside it. Read
        it to the end before the next member."""
        member = self._pending
        if member is None:
            raise RuntimeError("iter_data() called twice or before the first member")
        self._pending = None
        done = 0
        while done < member.size:
            wanted = min(chunk, member.size - done)
            data = self._in.read(wanted)
            done += len(data)
            if len(data) != wanted:
                raise self._truncated(member, done)
            yield data
        self._skip_padding(member)

    def _finish_pending(self) -> None:
        member = self._pending
        if member is None:
            return
        self._pending = None
        present = self._in.skip(member.size)
        if present < member.size:
            raise self._truncated(member, present)
        self._skip_padding(member)

    def _truncated(self, member: TarMember, present: int) -> TarFormatError:
        """The archive ended inside `member`'s data, `present` of its bytes read."""
        return TarFormatError(
            f"archive is truncated inside the data of {member.name!r} "
            f"({present} of {member.size} bytes present)",
            offset=self._in.offset,
            member=member.name,
        )

    def _skip_padding(self, member: TarMember) -> None:
        pad = -member.size % BLOCK
        if pad and len(self._in.read(pad)) != pad:
            raise TarFormatError(
                f"archive is truncated in the padding after {member.name!r}",
                offset=self._in.offset,
                member=member.name,
            )

    def _read_header_block(self, after: str | None) -> bytes | None:
        """The next 512-byte block, or None at a clean end of stream (reported by the caller)."""
        start = self._in.offset
        block = self._in.read(BLOCK)
        if not block:
            return None
        if len(block) != BLOCK:
            where = f" after {after!r}" if after else ""
            raise TarFormatError(
                f"archive is truncated inside a header{where} ({len(block)} of 512 bytes)",
                offset=start,
            )
        return block

    def _next_member(self) -> TarMember | None:
        long_name: str | None = None
        pax: dict[str, str] = {}
        extensions: list[bytes] = []
        extended_at: int | None = None  # the first long-name or PAX header of this member
        start = self._in.offset
        previous = self._last_name
        while True:
            header_offset = self._in.offset
            block = self._read_header_block(previous)
            if block is None:
                where = f" after {previous!r}" if previous else ""
                raise TarFormatError(
                    "archive ends without its end-of-archive blocks"
                    f"{where}: it was truncated (at a member boundary)",
                    offset=header_offset,
                )
            if block == bytes(BLOCK):
                if extended_at is not None:  # tarfile fails here too ("subsequent header")
                    raise TarFormatError(
                        f"the extended header at byte {extended_at} is followed by the end of "
                        "the archive, not by a member",
                        offset=extended_at,
                    )
                self._read_end_of_archive(header_offset)
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                where = f" after {previous!r}" if previous else " at the start"
                raise TarFormatError(
                    f"corrupt tar header at byte {header_offset}{where}: {exc}",
                    offset=header_offset,
                ) from None
            if info.type in _EXTENSION_TYPES:
                extensions.append(info.type)
                extended_at = header_offset if extended_at is None else extended_at
                payload = self._read_extension(info, header_offset)
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(payload, header_offset))
                elif info.type == tarfile.XGLTYPE:
                    _check_global_pax(_parse_pax(payload, header_offset), header_offset)
                continue
            name = pax.get("path", long_name if long_name is not None else info.name)
            size = _member_size(pax.get("size"), info.size, header_offset)
            self._last_name = name
            member = TarMember(name, size, info.type, start, tuple(extensions))
            if size and not member.is_regular and info.type in _DATALESS_TYPES:
                raise TarFormatError(
                    f"{member.kind()} {name!r} at byte {header_offset} declares {size} bytes of "
                    "data, which Python's tarfile and webdataset read as the next headers",
                    offset=header_offset,
                    member=name,
                )
            return member

    def _read_extension(self, info: tarfile.TarInfo, header_offset: int) -> bytes:
        if info.size > 1 << 20:
            raise TarFormatError(
                f"extended header at byte {header_offset} is implausibly large ({info.size} bytes)",
                offset=header_offset,
            )
        data = self._in.read(info.size + (-info.size % BLOCK))
        if len(data) < info.size + (-info.size % BLOCK):
            raise TarFormatError(
                f"archive is truncated inside an extended header at byte {header_offset}",
                offset=header_offset,
            )
        return data[: info.size]

    def _read_end_of_archive(self, first_zero_offset: int) -> None:
        second = self._in.read(BLOCK)
        if second != bytes(BLOCK):
            if len(second) < BLOCK and not any(second):
                raise TarFormatError(
                    "archive is truncated inside its end-of-archive blocks",
                    offset=first_zero_offset,
                )
            raise TarFormatError(
                f"corrupt tar: a zero block at byte {first_zero_offset} is followed by data",
                offset=first_zero_offset,
            )
        end = self._in.offset
        while chunk := self._in.read(_COPY_CHUNK):
            if any(chunk):
                raise TarFormatError(
                    f"data after the end-of-archive blocks at byte {first_zero_offset} "
                    "(concatenated archives?)",
                    offset=first_zero_offset,
                )
            if self._in.offset - end > MAX_TRAILING_ZEROS:
                raise TarFormatError(
                    f"trailing data: more than {MAX_TRAILING_ZEROS} zero bytes after the "
                    f"end-of-archive blocks at byte {first_zero_offset}, more than any record "
                    "padding",
                    offset=first_zero_offset,
                )


def _check_global_pax(records: dict[str, str], offset: int) -> None:
    """A global PAX header's path or size renames or resizes every member after it in
    tarfile (and so webdataset); rather than read the shard differently, refuse it."""
    for key in _GLOBAL_PAX_REFUSED:
        if key in records:
            raise TarFormatError(
                f"global PAX header at byte {offset} sets {key!r} for every following member",
                offset=offset,
            )


def _member_size(pax_size: str | None, header_size: int, offset: int) -> int:
    """The data size, from a PAX record when there is one; a negative or non-numeric size
    would desynchronise the stream (tarfile parses "-1" in the header as -1)."""
    try:
        size = int(pax_size) if pax_size is not None else header_size
    except ValueError:
        raise TarFormatError(
            f"corrupt PAX header before byte {offset}: size {str(pax_size)[:20]!r} is not a number",
            offset=offset,
        ) from None
    if size < 0:
        raise TarFormatError(
            f"corrupt tar header at byte {offset}: negative size {size}", offset=offset
        )
    return size


def _parse_pax(payload: bytes, offset: int) -> dict[str, str]:
    """Records of the form b"<len> <key>=<value>\\n" (POSIX.1-2001)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        if payload[pos] == 0:
            break
        space = payload.find(b" ", pos)
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise TarFormatError(f"corrupt PAX header at byte {offset}", offset=offset) from None
        record = payload[space + 1 : pos + length - 1]
        key, sep, value = record.partition(b"=")
        if not sep or length <= 0:
            raise TarFormatError(f"corrupt PAX header at byte {offset}", offset=offset)
        fields[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return fields
