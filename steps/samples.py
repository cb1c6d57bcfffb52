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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from .errors import DataError, ShardError
from .tar_reader import TarFormatError, TarMember, TarReader

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


@dataclass(frozen=True)
class Placed:
    """A member in its sample; `new_sample` when it starts one (its key is not the previous
    placed member's)."""

    member: TarMember
    key: str
    extension: str
    new_sample: bool


Fault = Literal["unsafe_name", "not_regular", "no_extension", "repeated_key", "duplicate_member"]


@dataclass(frozen=True)
class Broken:
    """A member that breaks the grouping rule, and how. An unsafe, non-regular or
    extension-less member belongs to no sample; a repeated key or a duplicate member is
    placed all the same (a `Placed` follows it), for a checker that goes on counting."""

    fault: Fault
    member: TarMember
    key: str | None = None
    extension: str | None = None
    reason: str = ""  # for unsafe_name: what is unsafe


def group_members(members: Iterable[TarMember]) -> Iterator[Placed | Broken]:
    """webdataset's grouping rule, written once: `SampleReader` raises at what breaks it,
    verify collects every break. Lazy: a member is placed before the next one is read, so
    a streaming reader can read its data in between."""
    seen: set[str] = set()
    current: str | None = None
    extensions: set[str] = set()
    for member in members:
        reason = unsafe_name_reason(member.name)
        if reason:
            yield Broken("unsafe_name", member, reason=reason)
            continue
        if not member.is_regular:
            yield Broken("not_regular", member)
            continue
        parts = split_member_name(member.name)
        if parts is None:
            yield Broken("no_extension", member)
            continue
        key, extension = parts
        new_sample = key != current
        if new_sample:
            if key in seen:
                yield Broken("repeated_key", member, key, extension)
            seen.add(key)
            current, extensions = key, set()
        elif extension in extensions:
            yield Broken("duplicate_member", member, key, extension)
        extensions.add(extension)
        yield Placed(member, key, extension, new_sample)


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
        current: RawSample | None = None
        for placed in group_members(self._members()):
            if isinstance(placed, Broken):
                self._refuse(placed)
                continue
            member, key, extension = placed.member, placed.key, placed.extension
            self._check_field(member, key, extension)
            if placed.new_sample:
                if current is not None:
                    yield current
                current = RawSample(key)
            assert current is not None
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

    def _refuse(self, broken: Broken) -> None:
        """Raise DataError for what breaks the grouping rule (a member without an extension
        is ignored, as webdataset skips it)."""
        member, key = broken.member, broken.key
        if broken.fault == "no_extension":
            self.ignored_members.append(member.name)
            return
        if broken.fault == "unsafe_name":
            reason = f"{broken.reason}: {member.name!r}"
            raise DataError(self._shard, reason, key=_key_of(member.name))
        if broken.fault == "not_regular":
            raise DataError(
                self._shard,
                f"member {member.name!r} is {member.kind()}, not a regular file",
                key=_key_of(member.name),
            )
        assert key is not None and broken.extension is not None
        self._check_field(member, key, broken.extension)
        if broken.fault == "repeated_key":
            raise DataError(
                self._shard,
                f"duplicate key: member {member.name!r} repeats a key seen earlier "
                "with other samples in between",
                key=key,
            )
        raise DataError(self._shard, f"duplicate member {member.name!r} in one sample", key=key)

    def _check_field(self, member: TarMember, key: str, extension: str) -> None:
        reserved = reserved_field_reason(extension)
        if reserved is not None:
            raise DataError(self._shard, f"member {member.name!r}: {reserved}", key=key)

    def _members(self) -> Iterator[TarMember]:
        iterator = iter(self._reader)
        while True:
            try:
                member = next(iterator)
            except StopIteration:
                return
            except TarFormatError as exc:
                raise self._format_error(exc, _key_of(exc.member)) from None
            if not member.is_directory:
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
