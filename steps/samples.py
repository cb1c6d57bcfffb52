"""Group tar members into samples the way webdataset does, and refuse unsafe shards.

A sample is the run of adjacent members that share a key: the member path up to the first
dot of its basename (`train/0001.seg.png` has key `train/0001` and extension `seg.png`;
extensions are matched in lower case, as webdataset does). A key that comes back after
other samples, absolute or `..` member names, and links or devices make the whole shard
invalid: webdataset would silently accept all of them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import DataError, ShardError
from .tarstream import TarFormatError, TarMember, TarReader

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNDECODED = re.compile("[\udc80-\udcff]")
# Fields webdataset adds to every sample: a member named `x.__key__` would replace the key a
# plugin sees (webdataset itself refuses such a shard as a duplicate).
RESERVED_FIELDS = ("__key__", "__url__", "__local_path__")


@dataclass
class RawSample:
    """A sample as read: the bytes of the members the recipe needs, the sizes of all of them."""

    key: str
    data: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes
    sizes: dict[str, int] = field(default_factory=dict)  # extension -> size, every member
    problem: str | None = None  # found while reading (e.g. an oversized member)


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, extension) by webdataset's rule, or None for a name with no extension."""
    directory, _, basename = name.rpartition("/")
    stem, dot, extension = basename.partition(".")
    if not dot or not stem or not extension:
        return None
    key = f"{directory}/{stem}" if directory else stem
    return key, extension.lower()


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name must not be trusted, or None when it is safe."""
    if not name:
        return "empty member name"
    if _UNDECODED.search(name):  # undecodable bytes, surrogate-escaped
        return "member name is not valid UTF-8"
    if _CONTROL.search(name):
        return "member name contains control characters"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute member name"
    if ".." in re.split(r"[/\\]", name):
        return "member name contains '..'"
    return None


def reserved_field_reason(name: str) -> str | None:
    """Why a field name cannot be set by a shard or a recipe, or None."""
    if name in RESERVED_FIELDS:
        return f"{name} is a reserved field"
    return None


def extension_reason(extension: object) -> str | None:
    """Why `extension` cannot end a member name we write, or None when it can.

    The member `KEY.EXTENSION` must pass the checks its readers apply, and must read back as
    the same key and extension: no path separator (it would move the member to another
    directory and another key), lower case (readers match extensions in lower case).
    """
    if not isinstance(extension, str) or not extension:
        return "an extension must be a non-empty string"
    return _text_extension_reason(extension)


@functools.lru_cache(maxsize=1024)  # a shard has few extensions, and every member asks
def _text_extension_reason(extension: str) -> str | None:
    if "/" in extension or "\\" in extension:
        return "an extension must not contain / or \\"
    if extension != extension.lower():
        return "an extension must be lower case (readers match extensions in lower case)"
    return reserved_field_reason(extension) or unsafe_name_reason(f"k.{extension}")


def written_name_reason(name: str) -> str | None:
    """Why a member name must not be written, or None: the reader's checks, plus a key and an
    extension that read back as written."""
    reason = unsafe_name_reason(name)
    if reason is not None:
        return reason
    if split_member_name(name) is None:
        return "member name has no extension"
    return extension_reason(name.rpartition("/")[2].partition(".")[2])


class SampleReader:
    """Iterates `RawSample`s from a tar stream, reading only the members `wants` asks for."""

    def __init__(
        self,
        reader: TarReader,
        shard: str,
        *,
        wants: Callable[[str], bool],
        max_member_bytes: int,
        length_known: bool = True,
    ) -> None:
        self._reader = reader
        self._shard = shard
        # A stream of unknown length (no Content-Length, a pipe) that ends early may be a
        # cut connection, which a retry can fix; with a known length it is a damaged shard.
        self._length_known = length_known
        self._wants = wants
        self._max_member_bytes = max_member_bytes
        self.ignored_members: list[str] = []  # names with no extension, as webdataset skips

    def __iter__(self) -> Iterator[RawSample]:
        finished: set[str] = set()
        current: RawSample | None = None
        for member in self._members():
            parts = split_member_name(member.name)
            if parts is None:
                self.ignored_members.append(member.name)
                continue
            key, extension = parts
            reserved = reserved_field_reason(extension)
            if reserved is not None:
                raise DataError(self._shard, f"member {member.name!r}: {reserved}", key=key)
            if current is not None and key != current.key:
                finished.add(current.key)
                yield current
                current = None
            if current is None:
                if key in finished:
                    raise DataError(
                        self._shard,
                        f"duplicate key: member {member.name!r} repeats a key seen earlier "
                        "with other samples in between",
                        key=key,
                    )
                current = RawSample(key)
            if extension in current.sizes:
                raise DataError(
                    self._shard, f"duplicate member {member.name!r} in one sample", key=key
                )
            current.sizes[extension] = member.size
            if not self._wants(extension):
                continue
            if member.size > self._max_member_bytes:
                current.problem = current.problem or (
                    f"member {member.name!r} has {member.size} bytes, above the limit of "
                    f"{self._max_member_bytes} (--max-member-mb)"
                )
                continue
            current.data[extension] = self._read(member, key)
        if current is not None:
            yield current

    def _members(self) -> Iterator[TarMember]:
        iterator = iter(self._reader)
        while True:
            try:
                member = next(iterator)
            except StopIteration:
                return
            except TarFormatError as exc:
                raise self._format_error(exc, _key_of(exc.member)) from None
            if member.is_directory:
                continue
            parts = split_member_name(member.name)
            key = parts[0] if parts else None
            reason = unsafe_name_reason(member.name)
            if reason:
                raise DataError(self._shard, f"{reason}: {member.name!r}", key=key)
            if not member.is_regular:
                raise DataError(
                    self._shard,
                    f"member {member.name!r} is {member.kind()}, not a regular file",
                    key=key,
                )
            yield member

    def _read(self, member: TarMember, key: str) -> bytes:
        try:
            return self._reader.read_data()
        except TarFormatError as exc:
            raise self._format_error(exc, key) from None

    def _format_error(self, exc: TarFormatError, key: str | None) -> ShardError:
        if exc.truncated and not self._length_known:
            cause = f"{exc.cause} (the input's length is unknown: the connection may have been cut)"
            return ShardError(self._shard, cause, key=key)
        return DataError(self._shard, exc.cause, key=key)


def _key_of(name: str | None) -> str | None:
    parts = split_member_name(name) if name else None
    return parts[0] if parts else None
