"""Which version of an input was read: pinned for the whole read, recorded in the manifest.

fsspec reads remote objects in ranges, and `ResumingReader` reopens an object after a dropped
connection: nothing else would stop a shard from being stitched together from two versions of
an input that is replaced while it is read. So the object's identity is taken once, before its
first byte is read, and every later request is tied to it:

- HTTP(S): each request carries `If-Match: <ETag>` (or `If-Unmodified-Since: <Last-Modified>`
  when the server gives no strong ETag); a server that honours it answers 412 once the object
  has changed.
- S3: s3fs already sends `IfMatch` with the ETag its own file object saw when opened; every
  reopened file object must have seen the ETag (and VersionId) first pinned.
- Any back-end, local files included: the identity is taken again once the shard has been
  read and must not have moved. That covers servers that ignore `If-Match` and local files
  (size and modification time in nanoseconds: a rewrite of the same size within one tick of
  the file system's clock is the one change it cannot see).

A changed input fails the shard as a transient failure (exit status 1): a retry reads the new
version whole. The identity is also what `--skip-existing` and `verify --inputs` compare to
tell an input that changed since its output was made.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, BinaryIO

import fsspec

from .errors import ShardError

Identity = dict[str, Any]  # JSON-ready: size, and etag / version_id / last_modified / mtime_ns

_HTTP = {"http", "https"}
_S3 = {"s3", "s3a"}
_ETAG_KEYS = ("ETag", "etag")
_VERSION_KEYS = ("VersionId", "generation")  # S3, GCS
_MODIFIED_KEYS = ("Last-Modified", "LastModified", "updated")
_PRECONDITION_FAILED = 412


class InputChanged(Exception):
    """The input is no longer the version first read; the message says what moved."""


def protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def identity_of(fs: fsspec.AbstractFileSystem, path: str) -> Identity:
    """The object's identity now, asked of the storage (never from a cache)."""
    return _identity_and_info(fs, path)[0]


def _identity_and_info(fs: fsspec.AbstractFileSystem, path: str) -> tuple[Identity, dict]:
    if "file" in protocols(fs) or "local" in protocols(fs):
        status = os.stat(path)
        return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}, {}
    with contextlib.suppress(Exception):  # a back-end without a cache to drop
        fs.invalidate_cache(path)
    info = fs.info(path)
    return identity_from_info(info), info


def identity_from_info(info: dict[str, Any]) -> Identity:
    """The fields of an fsspec `info()` that change when the object does. Last-Modified only
    when there is no ETag: an ETag already changes with the content, and re-uploading the same
    bytes is not a change worth redoing a shard for."""
    identity: Identity = {"size": info.get("size")}
    etag = _first(info, _ETAG_KEYS)
    if etag is not None:
        identity["etag"] = etag
    else:
        modified = _first(info, _MODIFIED_KEYS)
        if modified is not None:
            identity["last_modified"] = modified
    version = _first(info, _VERSION_KEYS)
    if version is not None:
        identity["version_id"] = version
    return identity


def _first(info: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = info.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def difference(recorded: Identity | None, current: Identity | None) -> str | None:
    """What moved between two identities, in words; None when they are the same."""
    if recorded == current:
        return None
    if recorded is None or current is None:
        return f"identity {_describe(recorded)} is now {_describe(current)}"
    changed = [
        f"{name} {recorded.get(name)!r} is now {current.get(name)!r}"
        for name in sorted(set(recorded) | set(current))
        if recorded.get(name) != current.get(name)
    ]
    return ", ".join(changed)


def _describe(identity: Identity | None) -> str:
    return "unknown" if identity is None else ", ".join(f"{k}={v!r}" for k, v in identity.items())


class PinnedObject:
    """One input object, opened (and reopened) only as the version first seen.

    The identity is taken on the first `open()`, so that a missing or refused object fails
    there, with the reader's usual messages and retries.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.identity: Identity | None = None
        self._info: dict[str, Any] = {}

    def open(self, **kwargs: Any) -> BinaryIO:
        if self.identity is None:
            self.identity, self._info = _identity_and_info(self.fs, self.path)
        stream = self.fs.open(self.path, "rb", **self._http_options(), **kwargs)
        try:
            self._check_opened(stream)
        except BaseException:
            stream.close()
            raise
        return stream

    def confirm_unchanged(self) -> None:
        """Raise InputChanged if the object is no longer the version pinned at the start."""
        if self.identity is None:
            return
        moved = difference(self.identity, identity_of(self.fs, self.path))
        if moved is not None:
            raise InputChanged(moved)

    def _http_options(self) -> dict[str, Any]:
        """Open options that make an HTTP server refuse any other version: the condition
        header, with the size known (fsspec's HTTP back-end then asks no HEAD per open)."""
        assert self.identity is not None
        if not protocols(self.fs) & _HTTP:
            return {}
        etag = self.identity.get("etag")
        if etag is not None and not etag.startswith("W/"):  # If-Match compares strongly
            condition = {"If-Match": etag}
        elif "last_modified" in self.identity:
            condition = {"If-Unmodified-Since": self.identity["last_modified"]}
        else:
            return {}
        headers = getattr(self.fs, "kwargs", {}).get("headers") or {}
        options: dict[str, Any] = {"headers": {**headers, **condition}}
        size = self.identity.get("size")
        if size is not None and self._info.get("partial", True):
            options["size"] = size
        elif headers:  # fsspec's HEAD would get `headers` twice: the check at the end remains
            return {}
        return options

    def _check_opened(self, stream: BinaryIO) -> None:
        """s3fs pins each file object to the ETag it saw on opening: it must be ours."""
        if not protocols(self.fs) & _S3:
            return
        details = getattr(stream, "details", None)
        if not isinstance(details, dict):
            return
        assert self.identity is not None
        seen = identity_from_info(details)
        pinned = ("etag", "version_id", "size")
        moved = difference(
            {name: self.identity.get(name) for name in pinned},
            {name: seen.get(name) for name in pinned},
        )
        if moved is not None:
            raise InputChanged(moved)


def changed_error(url: str, reason: str, offset: int | None = None) -> ShardError:
    """The one line for a shard whose input changed: exit status 1, since a rerun reads the
    new version whole."""
    where = f" (at byte {offset})" if offset else ""
    return ShardError(url, f"input changed while being read{where}: {reason}")


def changed_reason(exc: BaseException) -> str | None:
    """Why `exc` means the input changed under a pinned read, or None if it does not."""
    if isinstance(exc, InputChanged):
        return str(exc)
    causes = [exc, exc.__cause__] if exc.__cause__ is not None else [exc]
    for cause in causes:
        if getattr(cause, "status", None) == _PRECONDITION_FAILED:  # aiohttp, pinned request
            return "the server refused the version first read (HTTP 412 Precondition Failed)"
        if type(cause).__name__ == "FileExpired":  # s3fs: the ETag it pinned is gone
            return "the object's ETag is no longer the one first read"
        if isinstance(cause, OSError) and cause.errno == errno.EINVAL:
            text = str(cause)
            if "PreconditionFailed" in text or "pre-condition" in text:
                return "the storage refused the version first read (precondition failed)"
    return None
