"""Storage that misbehaves: resume interrupted reads, and turn back-end errors into clear ones.

Object stores and HTTP servers drop connections, time out and answer 503. fsspec's back-ends
handle some of it (s3fs retries a range read five times; fsspec's HTTP file does not retry at
all) and, when they give up, raise their client library's own exceptions (aiohttp, botocore),
which are not OSError and would escape the step as a traceback.

Reading: `ResumingReader` reopens the object and continues from the byte it had reached, a
bounded number of times in a row, then fails the shard with one line. A read that ends early
without an error (a server that closes the connection in place of a length) is caught above
us: the strict tar reader rejects an archive without its end-of-archive blocks.
An input that changed under a pinned read (see input_identity) fails the shard at once:
reopening it would read on from another version.
Writing: `upload_errors()` turns whatever a back-end raises while uploading into OSError,
which the step reports as "cannot write OUTPUT" after the upload has been aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import BinaryIO

from .errors import ShardError
from .input_identity import changed_error, changed_reason

READ_ATTEMPTS = 5  # tries in a row without progress before a read fails the shard
FIRST_BACKOFF = 0.1  # seconds before the first retry, doubled each time (1.5 s in all)
_RETRYABLE_STATUS = {408, 429}


@cache
def _client_errors() -> tuple[type[BaseException], ...]:
    """Base classes of the errors raised by the network clients under fsspec, if installed."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, asyncio.TimeoutError]
    with contextlib.suppress(ImportError):
        import aiohttp

        errors.append(aiohttp.ClientError)
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError

        errors.append(BotoCoreError)
    with contextlib.suppress(ImportError):
        from fsspec.exceptions import FSTimeoutError

        errors.append(FSTimeoutError)
    return tuple(errors)


@cache
def _permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors that another try cannot mend: missing, forbidden, no credentials."""
    errors: list[type[BaseException]] = [
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ]
    with contextlib.suppress(ImportError):
        from botocore import exceptions

        errors += [
            exceptions.NoCredentialsError,
            exceptions.PartialCredentialsError,
            exceptions.NoRegionError,
            exceptions.ParamValidationError,
        ]
    return tuple(errors)


def _status(exc: BaseException) -> int | None:
    """The HTTP status an aiohttp error carries, if any."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_storage_error(exc: BaseException) -> bool:
    """An error from the storage back-end or the network, as opposed to a bug of ours."""
    return isinstance(exc, _client_errors())


def is_transient(exc: BaseException) -> bool:
    """Worth another try: a dropped connection, a timeout, a 5xx; not a 404 or a 403."""
    if isinstance(exc, _permanent_errors()) or not is_storage_error(exc):
        return False
    status = _status(exc)
    return status is None or status >= 500 or status in _RETRYABLE_STATUS


def describe(exc: BaseException) -> str:
    """One line for an error message: the client's message with its type when useful."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, OSError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


def _missing_reason(exc: FileNotFoundError) -> str:
    """fsspec's HTTP back-end reports any failed HEAD/GET as "not found"; say what it was."""
    cause = exc.__cause__
    status = _status(cause) if cause is not None else None
    if status in (401, 403):
        return (
            f"access refused (HTTP {status}): the server may need a header or a token "
            "(--storage-option 'http={\"headers\": {...}}')"
        )
    if cause is not None and status != 404:
        return f"input shard cannot be opened: {describe(cause)}"
    return "input shard does not exist"


def raise_for_bad_options(exc: BaseException, url: str) -> None:
    """A back-end handed an option it does not know raises TypeError (fsspec's HTTP back-end
    wraps it in FileNotFoundError): say which and how to scope options."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        raise ShardError(
            url,
            f"a storage option does not apply to {scheme}:// ({describe(exc)}); give options "
            f"for one kind of URL only as --storage-option '{scheme}={{...}}'",
        ) from None


class ResumingReader(io.RawIOBase):
    """A read-only stream over `open_stream()` that survives dropped connections.

    On a transient error it closes the broken stream, opens a new one, moves it to the byte
    offset reached so far (seek, or read and discard for a stream that cannot seek), and
    tries again; `attempts` failures in a row without progress fail the shard. Every
    failure becomes a ShardError naming the shard, the byte offset and the cause.
    """

    def __init__(
        self,
        open_stream: Callable[[], BinaryIO],
        url: str,
        *,
        open_streaming: Callable[[], BinaryIO] | None = None,
        attempts: int = READ_ATTEMPTS,
        backoff: float = FIRST_BACKOFF,
    ) -> None:
        super().__init__()
        self._open_stream = open_stream
        # For a server that ignores Range headers: a plain stream from the first byte.
        self._open_streaming = open_streaming
        self.url = url
        self._attempts = attempts
        self._backoff = backoff
        self.offset = 0
        self.resumed = 0  # how many times a broken stream was replaced
        self._stream: BinaryIO | None = None
        self._retrying(lambda: self._current().read(0), "open the input")  # fail early

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._retrying(
            lambda: self._current().read(len(view)), f"read the input at byte {self.offset}"
        )
        view[: len(data)] = data
        self.offset += len(data)
        return len(data)

    def close(self) -> None:
        self._drop_stream()
        super().close()

    def _current(self) -> BinaryIO:
        if self._stream is None:
            stream = self._open_stream()
            try:
                _move_to(stream, self.offset)
            except BaseException:
                stream.close()
                raise
            self._stream = stream
        return self._stream

    def _retrying(self, operation: Callable[[], bytes], action: str) -> bytes:
        failures = 0
        while True:
            try:
                return operation()
            except Exception as exc:
                raise_for_bad_options(exc, self.url)
                changed = changed_reason(exc)
                if changed is not None:
                    raise changed_error(self.url, changed, self.offset) from None
                if self._open_streaming is not None and refuses_ranges(exc):
                    self._open_stream, self._open_streaming = self._open_streaming, None
                    self._drop_stream()
                    continue
                if not is_transient(exc):
                    raise self._failure(exc, failures + 1, action) from None
                failures += 1
                self._drop_stream()
                if failures >= self._attempts:
                    raise self._failure(exc, failures, action) from None
                self.resumed += 1
                time.sleep(self._backoff * 2 ** (failures - 1))

    def _failure(self, exc: Exception, tries: int, action: str) -> Exception:
        if not is_storage_error(exc):
            return exc  # a bug, not the storage: keep its traceback
        if isinstance(exc, FileNotFoundError):
            cause = (
                _missing_reason(exc)
                if self.offset == 0
                else f"input shard disappeared while being read (at byte {self.offset})"
            )
        elif isinstance(exc, PermissionError):
            cause = f"permission denied: {describe(exc)}"
        else:
            attempts = f" after {tries} attempts" if tries > 1 else ""
            cause = f"cannot {action}{attempts}: {describe(exc)}"
        return ShardError(self.url, cause)

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def refuses_ranges(exc: BaseException) -> bool:
    """fsspec's random-access HTTP file met a server that ignores Range headers (Python's
    http.server, some CDNs). fsspec raises a plain ValueError for it, so the text is the
    only mark."""
    return isinstance(exc, ValueError) and "support range requests" in str(exc)


def _move_to(stream: BinaryIO, offset: int) -> None:
    """Position a fresh stream at `offset`: seek when it can, else read and discard."""
    if offset == 0:
        return
    try:
        stream.seek(offset)
        return
    except (ValueError, OSError):  # io.UnsupportedOperation is both
        pass
    remaining = offset
    while remaining:
        skipped = len(stream.read(min(remaining, 1 << 20)))
        if not skipped:
            raise OSError(f"the object is now shorter than the {offset} bytes already read")
        remaining -= skipped


@contextlib.contextmanager
def upload_errors(url: str) -> Iterator[None]:
    """Surface a back-end's upload failure as OSError (callers report and clean up OSError)."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        raise_for_bad_options(exc, url)
        if not is_storage_error(exc):
            raise
        raise OSError(f"upload failed: {describe(exc)}") from exc


class UploadStream:
    """A writable stream whose back-end errors are OSError (see `upload_errors`)."""

    def __init__(self, stream: BinaryIO, url: str) -> None:
        self._stream = stream
        self._url = url

    def write(self, data: bytes) -> int:
        with upload_errors(self._url):
            return self._stream.write(data)

    def flush(self) -> None:
        with upload_errors(self._url):
            self._stream.flush()
