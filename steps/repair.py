"""`shardflow check --repair`: rewrite a shard whose problems a rewrite can fix.

The fix is the one maintainers keep advising by hand (`tar --sort=name`, webdataset #11,
#407), done safely: members grouped by key in order of first appearance, plain GNU headers
(no PAX), extensions in lower case, nothing after the end-of-archive blocks, written by the
deterministic writer, published atomically, then a manifest (so `shardflow verify` checks
the result). Members are copied one at a time from the offsets the check found, by ranged
reads: memory does not grow with the shard. The shard's version (size, ETag or mtime) is
taken before the check and compared before publishing, so a shard replaced meanwhile is not
stitched from two. Members without an extension, which every reader skips, are left out and
listed in the manifest's `ignored_members`, as augment does.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from . import storage
from .check import Located, ShardScan
from .errors import ShardError
from .manifest import ManifestBuilder, manifest_url, remove_stale_manifest, write_manifest
from .samples import split_member_name
from .tar_writer import TarWriter

RECIPE: dict[str, Any] = {
    "name": "repair",
    "ops": ["group members by key", "plain GNU headers", "no trailing data"],
}
RECIPE_HASH = (
    "sha256:"
    + hashlib.sha256(json.dumps(RECIPE, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
)


def grouped(members: list[Located]) -> tuple[list[tuple[str, list[Located]]], list[str]]:
    """Samples with all their members, in order of first appearance; names without an
    extension apart."""
    samples: dict[str, list[Located]] = {}
    ignored = []
    for member in members:
        parts = split_member_name(member.name)
        if parts is None:
            ignored.append(member.name)
            continue
        samples.setdefault(parts[0], []).append(member)
    return list(samples.items()), ignored


def written_name(name: str) -> str:
    """The name with its extension in lower case, as every reader matches it."""
    directory, slash, basename = name.rpartition("/")
    stem, dot, extension = basename.partition(".")
    return f"{directory}{slash}{stem}{dot}{extension.lower()}"


def repair_shard(scan: ShardScan, output_url: str, options: storage.StorageOptions) -> int:
    """Write the repaired shard and its manifest; the sample count. ShardError when the input
    cannot be read again or the output cannot be written (nothing is published then)."""
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    samples, ignored = grouped(scan.members)
    builder = ManifestBuilder(
        input=storage.comparable_url(scan.url),
        output=storage.comparable_url(output_url),
        recipe=RECIPE,
        recipe_hash=RECIPE_HASH,
        expect=None,
    )
    manifest_at = manifest_url(output_url)
    try:
        with (
            storage.open_ranged(scan.url, options) as source,
            storage.publish_atomically(output_url, options) as sink,
        ):
            writer = TarWriter(sink)
            for key, members in samples:
                names = [written_name(m.name) for m in members]
                for member, name in zip(members, names, strict=True):
                    source.seek(member.offset)
                    writer.add_from(name, member.size, source)
                builder.samples.append(
                    {
                        "key": key,
                        "members": [
                            {"name": n, "size": m.size} for n, m in zip(names, members, strict=True)
                        ],
                    }
                )
            if storage.current_identity(scan.url, options) != scan.identity:
                raise ShardError(scan.url, "changed while it was checked and repaired")
            size, sha256 = writer.close()
            remove_stale_manifest(output_url, options)
        manifest = builder.build(
            output_size=size,
            output_sha256=sha256,
            input_bytes=scan.size,
            input_identity=scan.identity,
            ignored_members=ignored,
            timings={"started": started_at, "seconds": round(time.monotonic() - started, 3)},
            threads=1,
        )
        write_manifest(manifest_at, manifest, options)
    except OSError as exc:
        raise ShardError(scan.url, f"cannot repair into {output_url}: {exc}") from None
    return len(samples)
