"""The per-sample table: one row per sample of a shard, made during the pass that already
streams every byte of it (verify, report), so it costs no second read.

Columns (JSON Lines, one object per line; the Parquet file has the same columns):
    shard         the shard's URL (credentials removed)
    key           the sample's key (webdataset's __key__)
    members       [{ext, size, sha256}] in archive order: extension, bytes, sha256 of the data
    image         extension of the sample's image member (jpg, jpeg, png, webp: the first
                  present, in that order), or null
    image_sha256  sha256 of that member (equal values: exact duplicate images)
    format        the image's format as its header declares it (JPEG, PNG, WEBP), or null
    width, height the image's size in pixels as its header declares it (before any EXIF
                  rotation), or null when the header cannot be read
    label         the text of the `cls` member (stripped, at most 256 characters), or null

Images are never decoded: Pillow opens the first bytes of the member (at most HEAD_BYTES,
kept while the member streams through the hash) and reads the header without loading pixels.
A header beyond that bound (a JPEG with a very large EXIF or ICC block before its frame
header) gives null sizes rather than an unbounded buffer. Member data is hashed in chunks,
never held whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from PIL import Image

from . import storage
from .dataset_report import TABLE_DIR, Stats, duplicate_line
from .images import PIL_FORMATS
from .redact import redact_url

HEAD_BYTES = 1 << 18  # of an image member, for its header
LABEL_BYTES = 1024  # of a cls member read for the label
LABEL_CHARS = 256
IMAGE_EXTENSIONS = tuple(PIL_FORMATS)  # jpg, jpeg, png, webp: the first present is "the image"
LABEL_EXTENSION = "cls"
COLUMNS = ("shard", "key", "members", "image", "image_sha256", "format", "width", "height", "label")


@dataclass
class _Member:
    extension: str
    size: int
    sha256: str
    head: bytes = b""


@dataclass
class SampleRow:
    shard: str
    key: str
    members: list[_Member] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        by_extension: dict[str, _Member] = {}
        for member in self.members:  # the first of a repeated extension, whose head was kept
            by_extension.setdefault(member.extension, member)
        image = next((e for e in IMAGE_EXTENSIONS if e in by_extension), None)
        header = image_header(by_extension[image].head, image) if image else None
        label = by_extension.get(LABEL_EXTENSION)
        text = label.head.decode("utf-8", "replace").strip()[:LABEL_CHARS] if label else None
        return {
            "shard": redact_url(self.shard),
            "key": self.key,
            "members": [
                {"ext": m.extension, "size": m.size, "sha256": m.sha256} for m in self.members
            ],
            "image": image,
            "image_sha256": by_extension[image].sha256 if image else None,
            "format": header[0] if header else None,
            "width": header[1] if header else None,
            "height": header[2] if header else None,
            "label": text,
        }


def image_header(head: bytes, extension: str) -> tuple[str, int, int] | None:
    """(format, width, height) from the first bytes of an image, restricted to the format its
    extension names; None when the header is not there or not valid. Pixels are not loaded."""
    try:
        with Image.open(io.BytesIO(head), formats=[PIL_FORMATS[extension]]) as image:
            return str(image.format), int(image.width), int(image.height)
    except Exception:  # any header Pillow refuses: an unknown size, not a failed pass
        return None


class RowBuilder:
    """Fed one member at a time in archive order (adjacent members sharing a key are one
    sample, as webdataset groups them); finished rows go to `sink` as dicts."""

    def __init__(self, shard: str, sink: RowSink, stats: Stats | None = None) -> None:
        self.shard = shard
        self.sink = sink
        self.stats = stats
        self._row: SampleRow | None = None
        if stats is not None:
            stats.shards += 1

    def add(self, key: str, extension: str, size: int, chunks: Iterable[bytes]) -> None:
        """Hash the member's data as it streams; keep the head an image or label needs."""
        if self._row is None or self._row.key != key:
            self.finish()
            self._row = SampleRow(self.shard, key)
        keep = (
            HEAD_BYTES
            if extension in IMAGE_EXTENSIONS
            else LABEL_BYTES
            if extension == LABEL_EXTENSION
            else 0
        )
        if any(m.extension == extension for m in self._row.members):
            keep = 0  # a repeated member (verify reports it): one head per extension, bounded
        digest = hashlib.sha256()
        head = bytearray()
        for chunk in chunks:
            digest.update(chunk)
            if len(head) < keep:
                head += chunk[: keep - len(head)]
        self._row.members.append(_Member(extension, size, digest.hexdigest(), bytes(head)))

    def finish(self) -> None:
        if self._row is not None:
            row = self._row.to_dict()
            self.sink.add(row)
            if self.stats is not None:
                self.stats.add_row(row)
            self._row = None


class RowSink:
    """Rows of one shard, spooled to a temporary file as JSON lines (never a list in memory);
    `copy_to` hands them on in order."""

    def __init__(self) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
        self.count += 1

    def copy_to(self, out: BinaryIO) -> None:
        self._file.seek(0)
        shutil.copyfileobj(self._file, out)

    def close(self) -> None:
        self._file.close()


def parquet_available() -> bool:
    """Whether the `parquet` extra (pyarrow) is installed."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


PARQUET_ROWS = 10_000  # rows per row group: what is held before it is written


def write_parquet(rows: Iterable[dict[str, Any]], stream: BinaryIO) -> int:
    """The rows as Parquet (the columns above), written a row group at a time; the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    member = pa.struct([("ext", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])
    schema = pa.schema(
        [
            ("shard", pa.string()),
            ("key", pa.string()),
            ("members", pa.list_(member)),
            ("image", pa.string()),
            ("image_sha256", pa.string()),
            ("format", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("label", pa.string()),
        ]
    )
    count = 0
    with pq.ParquetWriter(stream, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= PARQUET_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def table_url(directory: str, task: int, suffix: str = ".jsonl") -> str:
    """The table's file for batch `task` (one process checking every shard is batch 0)."""
    return f"{directory.rstrip('/')}/{TABLE_DIR}/part-{task:06d}{suffix}"


class RowStaging:
    """The rows of finished shards, copied into one temporary file as they finish (so only
    the shards being checked hold a file open) and read back in shard order."""

    def __init__(self) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
        self._segments: dict[int, tuple[int, int]] = {}  # position -> (offset, length)

    def __enter__(self) -> RowStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def add(self, position: int, sink: RowSink) -> None:
        self._file.seek(0, os.SEEK_END)
        start = self._file.tell()
        sink.copy_to(self._file)
        self._segments[position] = (start, self._file.tell() - start)
        sink.close()

    def lines(self) -> Iterator[bytes]:
        for position in sorted(self._segments):
            start, length = self._segments[position]
            self._file.seek(start)
            remaining = length
            while remaining > 0:
                line = self._file.readline(remaining)
                remaining -= len(line)
                yield line

    def rows(self) -> Iterator[dict[str, Any]]:
        for line in self.lines():
            yield json.loads(line)


def write_table(
    staging: RowStaging, directory: str, task: int, options: storage.StorageOptions
) -> list[str]:
    written = [table_url(directory, task)]
    with storage.publish_atomically(written[0], options) as out:
        for line in staging.lines():
            out.write(line)
    if parquet_available():
        written.append(table_url(directory, task, ".parquet"))
        # Written locally first: pyarrow wants a file it can treat as its own (an S3 upload
        # stream is not one), and the copy streams.
        with tempfile.TemporaryFile() as local:
            write_parquet(staging.rows(), local)
            local.seek(0)
            with storage.publish_atomically(written[1], options) as out:
                shutil.copyfileobj(local, out)
    return written


def duplicate_lines(staging: RowStaging) -> Iterator[bytes]:
    for row in staging.rows():
        line = duplicate_line(row)
        if line is not None:
            yield line
