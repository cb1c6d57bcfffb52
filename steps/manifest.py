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
    samples          [{key, members: [{name, size}]}] in archive order
    dropped, failed  [{key, reason}]
    ignored_members  member names without an extension (skipped, as webdataset does)
    output_size, output_sha256, input_bytes
    input_identity   the version of the input read: {size, and etag, version_id or
                     last_modified (remote), mtime_ns (local)}; null for pipe: inputs
    versions, timings, threads
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from . import __version__, storage

FORMAT = "shardflow.manifest/1"
SUFFIX = ".manifest.json"


def manifest_url(output_url: str) -> str:
    """`out-000001.tar` -> `out-000001.manifest.json` (any other name gets the suffix added)."""
    stem = output_url[: -len(".tar")] if output_url.endswith(".tar") else output_url
    return stem + SUFFIX


def versions() -> dict[str, str | None]:
    """What produced the bytes. isal is listed because PNG output at level 1 takes a faster
    path when it is installed: the same pixels, other bytes (null: not installed); simplejpeg
    because with it a JPEG damaged mid-stream fails its sample instead of being written."""
    import numpy
    import PIL

    return {
        "shardflow": __version__,
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "isal": _installed_version("isal"),
        "simplejpeg": _installed_version("simplejpeg"),
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class ManifestBuilder:
    """Collects per-sample records while a shard is written."""

    input: str
    output: str
    recipe: dict[str, Any]
    recipe_hash: str
    expect: list[str] | None
    options: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def add_written(self, key: str, members: list[tuple[str, bytes]]) -> None:
        self.samples.append(
            {"key": key, "members": [{"name": n, "size": len(d)} for n, d in members]}
        )

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


def write_manifest(url: str, manifest: dict[str, Any], options: storage.StorageOptions) -> None:
    data = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    storage.write_atomically(url, data, options)
