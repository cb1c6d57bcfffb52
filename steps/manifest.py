"""The manifest: written last, beside each output shard, its presence means "complete".

For `out-000001.tar` it is `out-000001.manifest.json`. It records what went in (input URL,
recipe and its hash), what came out (every sample's members and sizes, the archive's size
and sha256) and what was left out and why (dropped and failed keys with reasons). The
verification step checks a shard against it; `--skip-existing` trusts a shard whose
manifest names the same input, the same version of it and the same recipe hash.

Format (version 1):
    format           "shardflow.manifest/1"
    input, output    URLs as given
    recipe           canonical recipe; recipe_hash "sha256:<hex>" of it
    options          the other settings that change the result: on_error, max_pixels,
                     max_member_bytes (--skip-existing redoes a shard made with others)
    expect           output extensions every sample has, or null when they vary
    counts           {read, written, dropped, failed}; read = written + dropped + failed
    samples          [{key, members: [{name, size}]}] in archive order; a reshard's add
                     "from": {shard, key}, the input sample it copies (its lineage)
    reshard          a reshard's outputs only: {plan, output, entry_sha256, oversized}
    dropped, failed  [{key, reason}]
    ignored_members  member names without an extension (skipped, as webdataset does)
    output_size, output_sha256, input_bytes
    input_identity   the version of the input read: {size, and etag, version_id or
                     last_modified (remote), mtime_ns (local)}; null for pipe: inputs
    versions, timings, threads
    png_encoders     per PNG member extension: {encoder: fpng|isal|pillow, version} (absent
                     when the recipe writes no PNG); bytes differ between encoders, pixels do not
    implementations  [{operation, resizer, version}] for each `resample: area` resize: OpenCV
                     or numpy (absent when there is none); their pixels may differ by a level
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, BinaryIO

from . import __version__, storage

FORMAT = "shardflow.manifest/1"
SUFFIX = ".manifest.json"


def manifest_url(output_url: str) -> str:
    """`out-000001.tar` -> `out-000001.manifest.json` (any other name gets the suffix added)."""
    stem = output_url[: -len(".tar")] if output_url.endswith(".tar") else output_url
    return stem + SUFFIX


def versions() -> dict[str, str | None]:
    """What produced the bytes. isal and fpng are listed because PNG output at level 1 takes
    a faster path when one is installed: the same pixels, other bytes (null: not installed);
    simplejpeg because with it a JPEG damaged mid-stream fails its sample instead of being
    written (and JPEGs are decoded by it, to the same pixels as Pillow's)."""
    import numpy
    import PIL

    return {
        "shardflow": __version__,
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "isal": _installed_version("isal"),
        "simplejpeg": _installed_version("simplejpeg"),
        "fpng": _installed_version("fpng"),
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class RecordSpool:
    """A list of JSON records kept in a temporary file rather than in memory.

    A manifest lists every sample; held as Python dicts until the shard ends, that list made
    memory grow with the sample count (kilobytes a sample). On disk it costs nothing, and the
    manifest is streamed from it."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by write_json_array)
        self.count = 0
        self.first: dict[str, Any] | None = None  # kept in memory, for error messages

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self.count += 1
        if self.first is None:
            self.first = record

    def __len__(self) -> int:
        return self.count

    def write_json_array(self, stream: BinaryIO, indent: bytes) -> None:
        """Write `[record, ...]`, one record a line, and close the spool."""
        self._file.seek(0)
        stream.write(b"[")
        separator = b"\n"
        for line in self._file:
            stream.write(separator + indent + b" " + line.rstrip(b"\n"))
            separator = b",\n"
        stream.write((b"\n" + indent + b"]") if self.count else b"]")
        self._file.close()


@dataclass
class ManifestBuilder:
    """Collects per-sample records while a shard is written (on disk, see RecordSpool)."""

    input: str
    output: str
    recipe: dict[str, Any]
    recipe_hash: str
    expect: list[str] | None
    options: dict[str, Any] = field(default_factory=dict)
    samples: RecordSpool = field(default_factory=RecordSpool)
    dropped: RecordSpool = field(default_factory=RecordSpool)
    failed: RecordSpool = field(default_factory=RecordSpool)

    def add_written(
        self, key: str, members: Sequence[tuple[str, Sized]], source: dict[str, str] | None = None
    ) -> None:
        """`source`: where a resharded sample came from ({shard, key}), its lineage."""
        record: dict[str, Any] = {
            "key": key,
            "members": [{"name": n, "size": len(d)} for n, d in members],
        }
        if source is not None:
            record["from"] = source
        self.samples.append(record)

    def add_dropped(self, key: str, reason: str) -> None:
        self.dropped.append({"key": key, "reason": reason})

    def add_failed(self, key: str, reason: str) -> None:
        self.failed.append({"key": key, "reason": reason})

    @property
    def counts(self) -> dict[str, int]:
        written, dropped, failed = len(self.samples), len(self.dropped), len(self.failed)
        return {
            "read": written + dropped + failed,
            "written": written,
            "dropped": dropped,
            "failed": failed,
        }

    def build(
        self,
        *,
        output_size: int,
        output_sha256: str,
        input_bytes: int,
        input_identity: dict[str, Any] | None,
        ignored_members: list[str],
        timings: dict[str, Any],
        threads: int,
        png_encoders: dict[str, Any] | None = None,
        implementations: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "input": self.input,
            "output": self.output,
            "recipe": self.recipe,
            "recipe_hash": self.recipe_hash,
            "options": self.options,
            "expect": self.expect,
            "counts": self.counts,
            "output_size": output_size,
            "output_sha256": output_sha256,
            "input_bytes": input_bytes,
            "input_identity": input_identity,
            "dropped": self.dropped,
            "failed": self.failed,
            "ignored_members": ignored_members,
            "samples": self.samples,
            "versions": versions(),
            # Per PNG member: the encoder that wrote it and its version (see encoders.py).
            **({"png_encoders": png_encoders} if png_encoders else {}),
            # Per operation whose pixels depend on the install: the library that ran.
            **({"implementations": implementations} if implementations else {}),
            "timings": timings,
            "threads": threads,
        }


class ManifestError(Exception):
    """A manifest exists but cannot be read as one."""


def read_manifest(url: str, options: storage.StorageOptions) -> dict[str, Any] | None:
    """The manifest at `url`, None if there is none, ManifestError if it is not valid."""
    data = storage.read_bytes(url, options)
    if data is None:
        return None
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{url}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{url}: not a {FORMAT} manifest")
    return manifest


def remove_stale_manifest(output_url: str, options: storage.StorageOptions) -> None:
    """Remove the manifest an earlier run left beside `output_url`; called just before the new
    shard is published, so that an old manifest never vouches for it, even for the instant
    between publishing the shard and writing its own manifest."""
    storage.remove(manifest_url(output_url), options)


def write_manifest(url: str, manifest: dict[str, Any], options: storage.StorageOptions) -> None:
    """Write the manifest as indented JSON; RecordSpool values are streamed from their files
    (and closed), so a manifest of any size is written with constant memory."""
    spools = {k: v for k, v in manifest.items() if isinstance(v, RecordSpool)}
    fields = {k: v for k, v in manifest.items() if k not in spools}
    head = json.dumps(fields, indent=1, ensure_ascii=False).encode("utf-8")
    with storage.publish_atomically(url, options) as stream:
        stream.write(head[: -len(b"\n}")] if spools else head)
        for key, spool in spools.items():
            stream.write(b",\n " + json.dumps(key).encode("utf-8") + b": ")
            spool.write_json_array(stream, b" ")
        stream.write(b"\n}\n" if spools else b"\n")
