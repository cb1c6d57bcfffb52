"""The augment step: one input shard in, one output shard and its manifest out.

Read (streaming, strict) -> process samples in parallel threads (order kept) -> write a
deterministic tar to a temporary location -> publish atomically -> write the manifest last.
A shard-level problem (unreadable input, damaged tar, unsafe names, a sample error under
--on-error fail) publishes nothing and is reported as one line; the other shards of the
batch go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from . import storage
from .errors import EXIT_DATA, EXIT_FAILED, EXIT_OK, DataError, ShardError, UsageError
from .manifest import ManifestBuilder, ManifestError, manifest_url, read_manifest, write_manifest
from .parallel import ordered_map
from .pipeline import Outcome, Pipeline
from .progress import Progress
from .samples import SampleReader
from .tarstream import TarReader
from .tarwrite import ShardWriter

OnError = Literal["skip", "fail"]


@dataclass(frozen=True)
class AugmentOptions:
    storage_options: storage.StorageOptions = field(default_factory=dict)
    on_error: OnError = "skip"
    skip_existing: bool = False
    threads: int = 1
    max_member_bytes: int = 64 << 20
    allow_pipe: bool = False


@dataclass
class ShardResult:
    input: str
    output: str
    status: Literal["written", "skipped", "failed"]
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    output_size: int = 0
    exit_code: int = 0  # for a failed shard: 1 a retry may help, 3 damaged data (errors.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "counts": self.counts,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "output_size": self.output_size,
        }


def plan_shards(inputs: list[str], outputs: list[str] | str) -> list[tuple[str, str]]:
    """Pair inputs with outputs; an output ending in "/" is a directory for same-named shards."""
    if isinstance(outputs, str):
        directory = outputs
        return [(url, directory + url.rstrip("/").rsplit("/", 1)[-1]) for url in inputs]
    if len(inputs) != len(outputs):
        raise UsageError(
            f"{len(inputs)} input shards but {len(outputs)} output shards: the patterns must "
            "expand to the same number of URLs"
        )
    return list(zip(inputs, outputs, strict=True))


def already_done(
    input_url: str, output_url: str, recipe_hash: str, options: AugmentOptions
) -> dict | None:
    """The manifest of a finished shard made from the same input and recipe, if there is one."""
    try:
        manifest = read_manifest(manifest_url(output_url), options.storage_options)
    except ManifestError:
        return None
    if manifest is None:
        return None
    same_input = manifest.get("input") == storage.comparable_url(input_url)
    if not same_input or manifest.get("recipe_hash") != recipe_hash:
        return None
    if not storage.exists(output_url, options.storage_options):
        return None
    return manifest


def augment_shard(
    input_url: str,
    output_url: str,
    pipeline: Pipeline,
    options: AugmentOptions,
    progress: Progress | None = None,
) -> ShardResult:
    """Process one shard; never raises for shard-level problems (they are in the result)."""
    started = time.monotonic()
    if options.skip_existing:
        done = already_done(input_url, output_url, pipeline.recipe_hash, options)
        if done is not None:
            return ShardResult(
                input_url,
                output_url,
                "skipped",
                counts=done.get("counts", {}),
                output_size=done.get("output_size", 0),
            )
    try:
        manifest = _write_shard(input_url, output_url, pipeline, options, progress, started)
    except ShardError as exc:
        error, exit_code = str(exc), exc.exit_code
    except Exception as exc:  # a back-end or library failure must not end the batch
        error, exit_code = f"{input_url}: unexpected {type(exc).__name__}: {exc}", EXIT_FAILED
    else:
        return ShardResult(
            input_url,
            output_url,
            "written",
            counts=manifest["counts"],
            seconds=time.monotonic() - started,
            output_size=manifest["output_size"],
        )
    return ShardResult(
        input_url,
        output_url,
        "failed",
        error=error,
        seconds=time.monotonic() - started,
        exit_code=exit_code,
    )


def _write_shard(
    input_url: str,
    output_url: str,
    pipeline: Pipeline,
    options: AugmentOptions,
    progress: Progress | None,
    started: float,
) -> dict[str, Any]:
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    builder = ManifestBuilder(
        input=storage.comparable_url(input_url),
        output=storage.comparable_url(output_url),
        recipe=pipeline.canonical_recipe,
        recipe_hash=pipeline.recipe_hash,
        expect=pipeline.expected_extensions,
    )
    manifest_at = manifest_url(output_url)
    with storage.open_input(
        input_url, options.storage_options, allow_pipe=options.allow_pipe
    ) as stream:
        if progress is not None:
            progress.shard_started(storage.size(input_url, options.storage_options))
        tar = TarReader(stream)
        samples = SampleReader(
            tar, input_url, wants=pipeline.wants, max_member_bytes=options.max_member_bytes
        )
        try:
            with storage.publish_atomically(output_url, options.storage_options) as sink:
                writer = ShardWriter(sink, gzipped=storage.compression_of(output_url) == "gzip")
                for outcome in ordered_map(pipeline.process, samples, threads=options.threads):
                    _record(outcome, writer, builder, input_url, options.on_error)
                    if progress is not None:
                        progress.advance(tar.offset, 1)
                size, sha256 = writer.close()
                # A manifest from an earlier run must not sit beside the new shard, even for
                # the instant between publishing the shard and writing its own manifest.
                storage.remove(manifest_at, options.storage_options)
        except OSError as exc:
            raise ShardError(input_url, f"cannot write {output_url}: {exc}") from None
    seconds = time.monotonic() - started
    manifest = builder.build(
        output_size=size,
        output_sha256=sha256,
        input_bytes=tar.offset,
        ignored_members=samples.ignored_members,
        timings={
            "started": started_at,
            "seconds": round(seconds, 3),
            "samples_per_second": round(builder.counts["read"] / seconds, 2) if seconds else None,
        },
        threads=options.threads,
    )
    try:
        write_manifest(manifest_at, manifest, options.storage_options)
    except OSError as exc:
        raise ShardError(input_url, f"cannot write the manifest {manifest_at}: {exc}") from None
    return manifest


def _record(
    outcome: Outcome, writer: ShardWriter, builder: ManifestBuilder, shard: str, on_error: OnError
) -> None:
    if outcome.members is not None:
        for name, data in outcome.members:
            writer.add(name, data)
        builder.add_written(outcome.key, outcome.members)
    elif outcome.dropped is not None:
        builder.add_dropped(outcome.key, outcome.dropped)
    else:
        assert outcome.failed is not None
        if on_error == "fail":
            raise DataError(shard, f"{outcome.failed} (--on-error fail)", key=outcome.key)
        builder.add_failed(outcome.key, outcome.failed)


def batch_exit_code(results: list[ShardResult]) -> int:
    """0 when no shard failed; 3 when every failure is the data's (a retry would fail the
    same way); otherwise 1, so a retry redoes the shards that may pass (and only those
    without output: --skip-existing)."""
    codes = {r.exit_code for r in results if r.status == "failed"}
    if not codes:
        return EXIT_OK
    return EXIT_DATA if codes == {EXIT_DATA} else EXIT_FAILED


def augment_all(
    pairs: list[tuple[str, str]],
    pipeline: Pipeline,
    options: AugmentOptions,
    progress: Progress | None = None,
) -> Iterator[ShardResult]:
    """Each shard in turn; a failed shard does not stop the others."""
    for input_url, output_url in pairs:
        result = augment_shard(input_url, output_url, pipeline, options, progress)
        if progress is not None:
            progress.shard_finished()
        yield result
