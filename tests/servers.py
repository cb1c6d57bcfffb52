"""Real servers on 127.0.0.1 for the storage and fault tests, and the faults they inject.

- `S3Server`: moto's standalone S3 server (the `moto[server]` test extra), reached through
  s3fs over HTTP exactly as MinIO, Ceph or R2 would be.
- `FileServer`: an HTTP file server with byte ranges, optionally demanding a header.
- `S3Proxy`: a pass-through HTTP proxy in front of `S3Server`, so uploads and downloads can be
  broken on purpose.

Both HTTP servers apply `Fault`s: drop the connection before answering, cut a response body
short, answer with an error status, or hold a request until the test releases it (to kill a
worker at a known point of its upload). Every request is logged for assertions.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import itertools
import logging
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

HOST = "127.0.0.1"
HOLD_LIMIT = 60.0  # seconds a held request waits for release before giving up
_bucket_numbers = itertools.count()

Action = Literal["drop", "cut", "status", "hold"]


@dataclass
class Fault:
    """One misbehaviour for the requests it matches (all given criteria must match).

    drop    close the connection before any response (after reading the request line and
            headers, so an upload's body is never taken)
    cut     answer normally but close the connection after `after` bytes of the body
    status  answer `status` with an S3-style error body
    hold    set `held`, wait for `release`, then go on normally; a client killed meanwhile
            is noticed when its body cannot be read, and nothing is forwarded
    """

    action: Action
    method: str | None = None
    path: str | None = None  # regular expression searched in the path
    query: str | None = None  # substring of the query string
    times: int | None = None  # how many requests it affects; None: all
    skip: int = 0  # let this many matching requests through first
    after: int = 0
    status: int = 500
    code: str = "InternalError"
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hits: int = 0  # requests it applied to
    seen: int = 0  # requests it matched, skipped ones included

    def applies(self, method: str, path: str, query: str) -> bool:
        """Whether it applies to this request (counting it as seen, and as hit if so)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.path is not None and not re.search(self.path, path):
            return False
        if self.query is not None and self.query not in query:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        self.hits += 1
        return True


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    fault: Action | None


class _FaultyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__((HOST, 0), handler)
        self.faults: list[Fault] = []
        self.log: list[Request] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def add_fault(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget faults and the request log (between tests)."""
        with self.lock:
            for fault in self.faults:
                fault.release.set()
            self.faults.clear()
            self.log.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method)
                and (path is None or re.search(path, r.path))
            ]

    def take_fault(self, handler: BaseHTTPRequestHandler) -> Fault | None:
        """The first matching fault (counted as hit) and the logged request."""
        parts = urlsplit(handler.path)
        with self.lock:
            fault = next(
                (f for f in self.faults if f.applies(handler.command, parts.path, parts.query)),
                None,
            )
            self.log.append(
                Request(
                    handler.command,
                    parts.path,
                    parts.query,
                    dict(handler.headers.items()),
                    fault.action if fault else None,
                )
            )
        return fault

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.clear()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class _FaultyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FaultyServer

    def log_message(self, format: str, *args) -> None:
        pass  # the request log in the server is enough; keep pytest output clean

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _apply_fault(self) -> Fault | None:
        """Apply a fault that ends the request; return a `cut` fault for the body writer."""
        fault = self.server.take_fault(self)
        if fault is None:
            return None
        if fault.action == "drop":
            self._hang_up()
            raise _Done
        if fault.action == "status":
            self._send_error_body(fault.status, fault.code)
            raise _Done
        if fault.action == "hold":
            fault.held.set()
            fault.release.wait(HOLD_LIMIT)
            return None
        return fault

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_error_body(self, status: int, code: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>injected fault</Message></Error>"
        ).encode()
        self._discard_request_body()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _discard_request_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _write_body(self, chunks: Iterator[bytes], cut: Fault | None) -> None:
        """Write the body, hanging up after `cut.after` bytes when a cut fault applies."""
        budget = cut.after if cut is not None else None
        for chunk in chunks:
            if budget is not None and len(chunk) >= budget:
                self.wfile.write(chunk[:budget])
                self.wfile.flush()
                self._hang_up()
                return
            self.wfile.write(chunk)
            if budget is not None:
                budget -= len(chunk)
        if budget is not None:
            self._hang_up()


class _Done(Exception):
    """The fault has answered (or hung up): nothing more to do for this request."""


class _FileHandler(_FaultyHandler):
    server: FileServer

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        try:
            cut = self._apply_fault()
        except _Done:
            return
        missing = [
            name
            for name, value in self.server.required_headers.items()
            if self.headers.get(name) != value
        ]
        if missing:
            self._send_error_body(401, "Unauthorized")
            return
        path = self.server.root / urlsplit(self.path).path.lstrip("/")
        if not path.is_file() or self.server.root not in path.resolve().parents:
            self._send_error_body(404, "NotFound")
            return
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        if self.server.conditional and self.headers.get("If-Match", etag) != etag:
            self._send_error_body(412, "PreconditionFailed")
            return
        start, end = self._range(len(data))
        if self.server.sized:
            self.send_response(206 if (start, end) != (0, len(data)) else 200)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            if self.server.ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            if (start, end) != (0, len(data)):
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:  # no length, no ranges: the client can only stream from the start
            self.send_response(200)
            self.send_header("Accept-Ranges", "none")
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            piece = data[start:end]
            self._write_body((piece[i : i + 8192] for i in range(0, len(piece), 8192)), cut)

    def _range(self, size: int) -> tuple[int, int]:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match or not self.server.sized or not self.server.ranges:
            return 0, size
        start = min(int(match[1]), size)
        end = min(int(match[2]) + 1, size) if match[2] else size
        return start, max(start, end)


class FileServer(_FaultyServer):
    """Serves files under `root` over HTTP with byte ranges.

    `required_headers`: answer 401 unless the request carries these exact headers.
    `sized=False`: no Content-Length and no ranges (the body ends when the connection
    closes), as some dynamic servers answer.
    `ranges=False`: a Content-Length but Range headers ignored (the whole file, 200), as
    Python's http.server and some CDNs answer.
    Each file has an ETag (a hash of its content) and a Last-Modified date, and a request
    whose `If-Match` names another ETag gets 412, as nginx and object stores answer;
    `conditional=False` ignores If-Match, as Python's http.server does.
    """

    def __init__(
        self,
        root: Path,
        *,
        required_headers: dict[str, str] | None = None,
        sized: bool = True,
        ranges: bool = True,
        conditional: bool = True,
    ) -> None:
        super().__init__(_FileHandler)
        self.conditional = conditional
        self.root = root.resolve()
        self.required_headers = required_headers or {}
        self.sized = sized
        self.ranges = ranges


class _ProxyHandler(_FaultyHandler):
    server: S3Proxy

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        try:
            cut = self._apply_fault()
        except _Done:
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:  # the client went away mid-upload: forward nothing
            self._hang_up()
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self._write_body(iter([data]), cut)


class S3Proxy(_FaultyServer):
    """Forwards every request to the S3 server, applying faults first."""

    def __init__(self, upstream: str) -> None:
        super().__init__(_ProxyHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)


class S3Server:
    """moto's S3 server in a thread of the test process, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self.url = ""

    def __enter__(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    @staticmethod
    def credentials() -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "shardflow-test",
            "AWS_SECRET_ACCESS_KEY": "shardflow-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables a pod would get, pointing at this server (or a proxy)."""
        return {**self.credentials(), "AWS_ENDPOINT_URL": endpoint or self.url}

    def options(self) -> dict[str, str]:
        """Endpoint and credentials as fsspec storage options (what --storage-option sets)."""
        credentials = self.credentials()
        return {
            "endpoint_url": self.url,
            "key": credentials["AWS_ACCESS_KEY_ID"],
            "secret": credentials["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.credentials()["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials()["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket, so that tests never see each other's objects."""
        name = f"shardflow-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def pending_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        listing = self.client().list_multipart_uploads(Bucket=bucket)
        return sorted(upload["Key"] for upload in listing.get("Uploads", []))
