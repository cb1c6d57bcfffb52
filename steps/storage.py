"""Every byte in and out goes through here: fsspec URLs, the pipe: gate, atomic publishing.

Inputs are streamed (local files, http(s), s3, gs, anything fsspec knows, gzip inferred from
the name). Outputs appear at their URL only when complete: on local disk through a hidden
temporary file renamed into place; on S3 and GCS through an upload that is only committed on
success and aborted on failure (a killed process leaves an unfinished multipart upload, which
is invisible and which a bucket lifecycle rule cleans up); elsewhere through a temporary
object moved into place.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import shlex
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import braceexpand
import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import DataError, ShardError, UsageError
from .input_identity import Identity, InputChanged, PinnedObject, changed_error, identity_of
from .redact import redact_url
from .shard_patterns import MAX_SHARDS, PatternError, count_expansions
from .storage_faults import (
    ResumingReader,
    UploadStream,
    describe,
    is_storage_error,
    upload_errors,
)

StorageOptions = dict[str, Any]

_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_COMMIT_ON_CLOSE = {"s3", "s3a", "gs", "gcs"}  # file objects with commit()/discard()
_READ_ONLY = {"http", "https"}
_PROCESS_LOCAL = {"memory"}
WRITABLE_COMPRESSIONS = (None, "gzip")
# Back-ends whose folder listing names every object (an http "listing" is whatever page the
# server returns for the folder's URL).
_AUTHORITATIVE_LISTINGS = {"file", "local", "s3", "s3a", "gs", "gcs"}


def expand(pattern: str) -> list[str]:
    """Brace-expand a shard pattern (`train-{000000..000554}.tar`) into URLs, in order."""
    try:
        count = count_expansions(pattern)
    except PatternError as exc:
        raise UsageError(f"cannot expand pattern {pattern!r}: {exc}") from None
    if count > MAX_SHARDS:
        raise UsageError(
            f"pattern {pattern!r} names {count} shards, more than the limit of {MAX_SHARDS}"
        )
    try:
        urls = list(braceexpand.braceexpand(pattern))
    except Exception as exc:  # braceexpand raises plain exceptions on malformed patterns
        raise UsageError(f"cannot expand pattern {pattern!r}: {exc}") from None
    if not urls or not all(urls):
        raise UsageError(f"pattern {pattern!r} expands to no URL")
    return urls


def scheme(url: str) -> str:
    """The URL's scheme, "file" for a plain path."""
    protocol, _ = fsspec.core.split_protocol(url)
    return protocol or "file"


def local_path(url: str) -> str:
    """The path of a local URL (`file://` taken off, if there)."""
    return url[len("file://") :] if url.startswith("file://") else url


def comparable_url(url: str) -> str:
    """Local paths as absolute paths (`in/x.tar`, `./in/x.tar` and `file:///.../in/x.tar` are
    one shard, whatever the working directory); other URLs without their credentials (a
    signed URL signed again is the same object). Manifests record this form, so verify and
    --skip-existing recognise an input given another way, and no manifest holds a secret."""
    if scheme(url) != "file":
        return redact_url(url)
    return os.path.abspath(os.path.expanduser(local_path(url)))  # fsspec writes `~/x` in $HOME too


def check_url(url: str, *, writing: bool, allow_pipe: bool = False) -> None:
    """Raise UsageError for a URL we cannot or must not use; called before any work starts."""
    if url.startswith("pipe:"):
        if writing:
            raise UsageError(f"{url!r}: pipe: outputs cannot be published atomically")
        if not allow_pipe:
            raise UsageError(
                f"{url!r}: pipe: URLs run a shell command and are refused unless --allow-pipe "
                "is given"
            )
        return
    name = scheme(url)
    if writing and compression_of(url) not in WRITABLE_COMPRESSIONS:
        raise UsageError(
            f"{url!r}: {compression_of(url)} outputs are not supported; name the output .tar "
            "or .tar.gz"
        )
    if writing and name in _PROCESS_LOCAL:
        raise UsageError(
            f"{url!r}: {name}:// lives inside one process and vanishes when it exits; write "
            "outputs to a path, s3:// or gs://"
        )
    if writing and name in _READ_ONLY:
        raise UsageError(
            f"{url!r}: {name}:// is read-only; write outputs to a path, s3:// or gs://"
        )
    try:
        fsspec.get_filesystem_class(name)
    except ValueError:
        raise UsageError(f"{url!r}: unknown URL scheme {name!r}") from None
    except ImportError:
        extra = _EXTRAS.get(name)
        hint = f"pip install 'shardflow[{extra}]'" if extra else "install its fsspec back-end"
        raise UsageError(f"{url!r}: {name}:// needs an optional dependency: {hint}") from None


def options_for(url: str, options: StorageOptions) -> StorageOptions:
    """The storage options for `url`: the unscoped ones, then those under its scheme's names.

    `{"endpoint_url": E}` applies to every URL; `{"s3": {"endpoint_url": E}, "http":
    {"headers": H}}` lets an http input and an s3 output each get their own (a back-end
    handed another's option fails: aiohttp rejects endpoint_url, aiobotocore headers).
    """
    names = set(_protocols(fsspec.get_filesystem_class(scheme(url))))
    known = set(fsspec.available_protocols())
    selected: StorageOptions = {}
    scoped: StorageOptions = {}
    for key, value in options.items():
        if isinstance(value, dict) and key in known:
            if key in names:
                scoped.update(value)
        else:
            selected[key] = value
    return {**selected, **scoped}


def filesystem(url: str, options: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system and path of `url`, with its scheme's options."""
    return _filesystem(url, options)


def _filesystem(url: str, options: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    check_url(url, writing=False)  # an unknown scheme is a usage error, never a traceback
    return fsspec.core.url_to_fs(url, **options_for(url, options))


@dataclass
class OpenInput:
    """An input being read: its stream, and the version of the object it is pinned to."""

    stream: BinaryIO
    pinned: PinnedObject | None  # None for pipe: inputs, which have no stored version

    @property
    def identity(self) -> Identity | None:
        return self.pinned.identity if self.pinned is not None else None

    def confirm_unchanged(self, url: str) -> None:
        """Raise ShardError if the input is no longer the version read (call after reading,
        before publishing)."""
        if self.pinned is None:
            return
        try:
            self.pinned.confirm_unchanged()
        except InputChanged as exc:
            raise changed_error(url, str(exc)) from None
        except Exception as exc:
            cause = describe(exc) if is_storage_error(exc) else repr(exc)
            raise ShardError(url, f"cannot check that the input is unchanged: {cause}") from None


@contextlib.contextmanager
def open_input(
    url: str,
    options: StorageOptions,
    *,
    allow_pipe: bool = False,
    compression: str | None = "infer",
) -> Iterator[BinaryIO]:
    """A binary stream of the shard; raises ShardError if it cannot be opened.

    `compression=None` gives the stored bytes as they are (verify hashes those)."""
    with open_pinned_input(url, options, allow_pipe=allow_pipe, compression=compression) as opened:
        yield opened.stream


@contextlib.contextmanager
def open_pinned_input(
    url: str,
    options: StorageOptions,
    *,
    allow_pipe: bool = False,
    compression: str | None = "infer",
) -> Iterator[OpenInput]:
    """`open_input`, with every read tied to the version of the object first seen (see
    input_identity): a shard is never stitched from two versions of its input."""
    check_url(url, writing=False, allow_pipe=allow_pipe)
    if url.startswith("pipe:"):
        with _open_pipe(url) as stream:
            yield OpenInput(stream, None)
        return
    fs, path = _filesystem(url, options)
    pinned = PinnedObject(fs, path)
    # Resumes after dropped connections; any failure is a ShardError naming the shard.
    raw = ResumingReader(pinned.open, url, open_streaming=lambda: pinned.open(block_size=0))
    if compression == "infer":
        compression = compression_of(url)
    stream = cast(
        BinaryIO,
        _DecompressionErrors(fsspec.compression.compr[compression](raw, mode="rb"), url)
        if compression
        else raw,
    )
    try:
        yield OpenInput(stream, pinned)
    finally:
        stream.close()
        raw.close()


def current_identity(url: str, options: StorageOptions) -> Identity | None:
    """The identity the input has now (None for pipe: inputs); raises what the back-end
    raises when it cannot be asked."""
    if url.startswith("pipe:"):
        return None
    fs, path = _filesystem(url, options)
    return identity_of(fs, path)


def compression_of(url: str) -> str | None:
    """The compression a shard's name implies: fsspec's inference, plus `.tgz` for gzip."""
    return "gzip" if url.endswith(".tgz") else fsspec.utils.infer_compression(url)


class _DecompressionErrors:
    """A decompressing stream whose format errors are the input's fault, said so: gzip, bz2
    and xz raise OSError, EOFError or their own errors, which would otherwise pass for a
    failure to write the output."""

    def __init__(self, stream: BinaryIO, url: str) -> None:
        self._stream = stream
        self._url = url

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except ShardError:
            raise
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise DataError(self._url, f"cannot decompress the input: {exc}") from None

    def close(self) -> None:
        self._stream.close()


class _PipeReader:
    """The command's stdout; at end of stream, a failed command raises instead of returning
    b"", so its failure is seen while the shard is still unpublished (`|| true` and a short
    download cannot pass for a complete shard)."""

    def __init__(self, url: str, process: subprocess.Popen) -> None:
        self._url = url
        self._process = process

    def read(self, size: int = -1) -> bytes:
        assert self._process.stdout is not None
        data = self._process.stdout.read(size)
        if not data and size != 0:
            status = self._process.wait()
            if status != 0:
                command = shlex.quote(self._url[len("pipe:") :])
                raise ShardError(self._url, f"pipe command exited with status {status}: {command}")
        return data


@contextlib.contextmanager
def _open_pipe(url: str) -> Iterator[BinaryIO]:
    command = url[len("pipe:") :]
    process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        yield _PipeReader(url, process)  # type: ignore[misc]
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()


def exists(url: str, options: StorageOptions) -> bool:
    fs, path = _filesystem(url, options)
    return fs.exists(path)


def absent(urls: list[str], options: StorageOptions) -> set[str]:
    """The URLs that a listing of their folder shows do not exist.

    One listing per folder instead of two requests per shard: verifying a million shards of
    which most were never written is then a few listings, not hours of HEAD requests. URLs
    whose folder cannot be listed (http, no list permission) are left out: the caller checks
    those one by one."""
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        if url.startswith("pipe:") or scheme(url) not in _AUTHORITATIVE_LISTINGS:
            continue
        folder, slash, _ = url.rpartition("/")
        if slash and (folder.endswith((":", "/")) or not folder):
            continue  # the root of a bucket or of the disk: checked one by one
        by_folder.setdefault(folder if slash else ".", []).append(url)
    missing: set[str] = set()
    for folder, members in by_folder.items():
        try:
            fs, path = _filesystem(folder, options)
            names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)}
        except FileNotFoundError:
            names = set()
        except Exception:  # a back-end that cannot list: these URLs are checked one by one
            continue
        missing.update(url for url in members if url.rsplit("/", 1)[-1] not in names)
    return missing


def list_names(folder: str, options: StorageOptions) -> list[str]:
    """The names of the objects in a folder ([] when it does not exist)."""
    fs, path = _filesystem(folder, options)
    try:
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def remove(url: str, options: StorageOptions) -> None:
    """Delete the object if it exists."""
    fs, path = _filesystem(url, options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def remove_empty_folder(url: str) -> None:
    """Remove a local folder that is left empty (the hand-over folder of a fan-out's parts,
    once merged); object stores have no folders to leave behind."""
    if scheme(url) != "file":
        return
    with contextlib.suppress(OSError):  # not empty, or already gone: left as it is
        os.rmdir(local_path(url))


def size(url: str, options: StorageOptions, *, stored: bool = False) -> int | None:
    """The stored size in bytes, or None when unknown or (unless `stored`) not the size of
    what is read (compressed and pipe: inputs)."""
    if url.startswith("pipe:") or (not stored and compression_of(url)):
        return None
    try:
        fs, path = _filesystem(url, options)
        value = fs.size(path)
    except Exception:  # progress is best effort: any back-end error just means "unknown"
        return None
    return value if isinstance(value, int) else None


def read_bytes(url: str, options: StorageOptions) -> bytes | None:
    """The whole content of a small object, or None if it does not exist."""
    fs, path = _filesystem(url, options)
    try:
        with fs.open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def read_head(url: str, options: StorageOptions, limit: int) -> bytes:
    """At most `limit` bytes from the start of a small object (a recipe), whatever size it
    claims or turns out to have. Raises what the back-end raises (FileNotFoundError for a
    missing object, with fsspec's HTTP back-end's real cause chained to it)."""
    if scheme(url) == "file":
        with open(local_path(url), "rb") as stream:
            return read_up_to(stream, limit)
    fs, path = _filesystem(url, options)
    # Over HTTP, a plain stream: no HEAD first and no read-ahead past the limit.
    streaming = {"block_size": 0} if scheme(url) in _READ_ONLY else {}
    with fs.open(path, "rb", **streaming) as stream:
        return read_up_to(stream, limit)


def read_up_to(stream: BinaryIO, limit: int) -> bytes:
    """`limit` bytes, or all there is: a network stream's read(n) returns what has arrived,
    which may be less than n long before the end."""
    pieces: list[bytes] = []
    wanted = limit
    while wanted > 0:
        piece = stream.read(wanted)
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
    return b"".join(pieces)


@contextlib.contextmanager
def publish_atomically(url: str, options: StorageOptions) -> Iterator[BinaryIO]:
    """Yield a writable stream; the object appears at `url` only if the block ends normally."""
    check_url(url, writing=True)
    fs, path = _filesystem(url, options)
    if isinstance(fs, LocalFileSystem):
        with _publish_local(path) as stream:
            yield stream
    elif set(_protocols(fs)) & _COMMIT_ON_CLOSE:
        with _publish_committed(fs, path, url) as stream:
            yield stream
    else:
        with _publish_by_move(fs, path, url) as stream:
            yield stream


def write_atomically(url: str, data: bytes, options: StorageOptions) -> None:
    with publish_atomically(url, options) as stream:
        stream.write(data)


def temporary_name(path: str) -> str:
    """A hidden sibling of `path` that no shard pattern matches: `.NAME.<random>.partial`."""
    directory, _, name = path.rpartition("/")
    hidden = f".{name}.{uuid.uuid4().hex[:12]}.partial"
    return f"{directory}/{hidden}" if directory else hidden


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


@contextlib.contextmanager
def _publish_local(path: str) -> Iterator[BinaryIO]:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = temporary_name(path)
    stream = open(temporary, "wb")  # noqa: SIM115 (closed on both paths below)
    try:
        yield stream
        stream.flush()
        os.fsync(stream.fileno())
        stream.close()
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _publish_committed(fs: fsspec.AbstractFileSystem, path: str, url: str) -> Iterator[BinaryIO]:
    stream = fs.open(path, "wb", autocommit=False)
    try:
        yield UploadStream(stream, url)  # type: ignore[misc]
        with upload_errors(url):
            stream.close()
            stream.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            stream.discard()
        # Closed for good: the file's finaliser would otherwise begin a new multipart upload.
        stream.closed = True
        raise


@contextlib.contextmanager
def _publish_by_move(fs: fsspec.AbstractFileSystem, path: str, url: str) -> Iterator[BinaryIO]:
    temporary = temporary_name(path)
    try:
        with upload_errors(url), fs.open(temporary, "wb") as stream:
            yield UploadStream(stream, url)  # type: ignore[misc]
        with upload_errors(url):
            fs.mv(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(temporary)
        raise


def open_ranged(url: str, options: StorageOptions, block_size: int = 1 << 20) -> BinaryIO:
    """A seekable file object reading `block_size` bytes per request: seeking over data the
    caller does not need costs no transfer (ranged reads on object stores and HTTP)."""
    fs, path = _filesystem(url, options)
    return fs.open(path, "rb", block_size=block_size)
