"""The augment step: one input shard in, one output shard and its manifest out.

Read (streaming, strict) -> process samples in parallel workers, threads or processes (order
kept) -> write a deterministic tar to a temporary location -> publish atomically -> write the
manifest last.
A shard-level problem (unreadable input, damaged tar, unsafe names, a sample error under
--on-error fail) publishes nothing and is reported as one line; the other shards of the
batch go on.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from . import storage
from .errors import EXIT_DATA, EXIT_FAILED, EXIT_KILLED, EXIT_OK, DataError, ShardError
from .failures import every_sample_failed
from .input_identity import difference
from .manifest import (
    ManifestBuilder,
    ManifestError,
    manifest_url,
    read_manifest,
    remove_stale_manifest,
    write_manifest,
)
from .parallel import Transfer, ordered_map
from .pipeline import Outcome, Pipeline
from .progress import ShardProgress
from .redact import redact_text, redact_url
from .samples import SampleReader
from .tar_reader import TarReader
from .tar_writer import Pieces, TarWriter, UnsafeMemberName
from .verify import ManifestView, manifest_view, verify_shard
from .worker_processes import WorkerDied

OnError = Literal["skip", "fail"]


@dataclass(frozen=True)
class AugmentOptions:
    storage_options: storage.StorageOptions = field(default_factory=dict)
    on_error: OnError = "skip"
    skip_existing: bool = False
    threads: int = 1
    processes: bool = False  # the `threads` workers are forked processes (parallel.py)
    max_member_bytes: int = 64 << 20
    allow_pipe: bool = False
    verify_existing: bool = False  # with skip_existing: read a finished shard before trusting it


def result_options(pipeline: Pipeline, options: AugmentOptions) -> dict[str, Any]:
    """The settings besides the recipe that change what a shard holds: which samples fail,
    and whether a failure fails the shard. A manifest records them; --skip-existing trusts
    only a manifest recording the same."""
    return {
        "on_error": options.on_error,
        "max_pixels": pipeline.max_pixels,
        "max_member_bytes": options.max_member_bytes,
    }


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
    requests: int = 0  # read requests made (a reshard output's ranged reads)

    @classmethod
    def not_finished(
        cls, input_url: str, output_url: str, death: WorkerDied, *, named: str | None = None
    ) -> ShardResult:
        """The result of a shard whose worker process died before returning it, named by
        its input (or `named`), with exit_code_of(death)."""
        return cls(
            input_url,
            output_url,
            "failed",
            error=redact_text(f"{named or input_url}: not finished: {death}"),
            exit_code=exit_code_of(death),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": redact_url(self.input),
            "output": redact_url(self.output),
            "status": self.status,
            "counts": self.counts,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "output_size": self.output_size,
        }


def already_done(
    input_url: str, output_url: str, pipeline: Pipeline, options: AugmentOptions
) -> ManifestView | None:
    """The manifest of a finished shard made from the same input, recipe and options, beside a
    shard of the size it records (and, with verify_existing, passing verify's checks).

    Anything less is redone: a manifest that is not valid JSON or lacks a field (redoing
    replaces it), an older one without options, a shard truncated or emptied since. Raises
    ShardError when the manifest cannot be read at all: that shard fails, not the batch.
    """
    at = manifest_url(output_url)
    try:
        manifest = read_manifest(at, options.storage_options)
        view = manifest_view(manifest) if manifest is not None else None
    except ManifestError:
        return None
    except Exception as exc:  # any back-end's error: a verdict for this shard only
        cause = f"cannot read the manifest {at} of an earlier run: {type(exc).__name__}: {exc}"
        raise ShardError(input_url, cause) from None
    if view is None or manifest is None:
        return None
    same_input = manifest.get("input") == storage.comparable_url(input_url)
    if not same_input or manifest.get("recipe_hash") != pipeline.recipe_hash:
        return None
    if manifest.get("options") != result_options(pipeline, options):
        return None
    if storage.size(output_url, options.storage_options, stored=True) != view.output_size:
        return None  # missing, truncated, emptied or replaced (or its size is unknown)
    if not input_unchanged(manifest, input_url, options.storage_options):
        return None
    if options.verify_existing and verify_shard(output_url, options.storage_options).problems:
        return None
    return view


def input_unchanged(manifest: dict, input_url: str, options: storage.StorageOptions) -> bool:
    """Whether the input is still the version the manifest records: a shard made from an
    older version is redone. Unknown counts as changed (a manifest that records no identity,
    an input that cannot be asked now): skipping is only for what is known to be done."""
    if "input_identity" not in manifest:
        return False
    try:
        current = storage.current_identity(input_url, options)
    except Exception:  # any back-end's error: the shard is redone, which reports it
        return False
    return difference(manifest["input_identity"], current) is None


def augment_shard(
    input_url: str,
    output_url: str,
    pipeline: Pipeline,
    options: AugmentOptions,
    progress: ShardProgress | None = None,
) -> ShardResult:
    """Process one shard; never raises for shard-level problems (they are in the result)."""
    started = time.monotonic()
    try:
        done = (
            already_done(input_url, output_url, pipeline, options)
            if options.skip_existing
            else None
        )
    except ShardError as exc:
        return ShardResult(input_url, output_url, "failed", error=str(exc), exit_code=EXIT_FAILED)
    if done is not None:
        return ShardResult(
            input_url, output_url, "skipped", counts=done.counts, output_size=done.output_size
        )
    try:
        manifest = _write_shard(input_url, output_url, pipeline, options, progress, started)
    except ShardError as exc:
        error, exit_code = redact_text(str(exc)), exc.exit_code
    except WorkerDied as exc:
        key = getattr(exc.item, "key", None)
        died = ShardError(input_url, str(exc), key=key if isinstance(key, str) else None)
        error = redact_text(str(died))
        exit_code = exit_code_of(exc)
    except Exception as exc:  # a back-end or library failure must not end the batch
        error = redact_text(f"{input_url}: unexpected {type(exc).__name__}: {exc}")
        exit_code = EXIT_FAILED
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
    progress: ShardProgress | None,
    started: float,
) -> dict[str, Any]:
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    builder = ManifestBuilder(
        input=storage.comparable_url(input_url),
        output=storage.comparable_url(output_url),
        recipe=pipeline.canonical_recipe,
        recipe_hash=pipeline.recipe_hash,
        expect=pipeline.expected_extensions,
        options=result_options(pipeline, options),
    )
    manifest_at = manifest_url(output_url)
    with storage.open_pinned_input(
        input_url, options.storage_options, allow_pipe=options.allow_pipe
    ) as opened:
        stream = opened.stream
        length = storage.size(input_url, options.storage_options)
        if progress is not None:
            progress.shard_started(length)
        tar = TarReader(stream)
        samples = SampleReader(
            tar,
            input_url,
            wants=pipeline.wants,
            max_member_bytes=options.max_member_bytes,
            length_known=length is not None,
        )
        try:
            with storage.publish_atomically(output_url, options.storage_options) as sink:
                writer = TarWriter(sink, gzipped=storage.compression_of(output_url) == "gzip")
                outcomes = ordered_map(
                    pipeline.process,
                    samples,
                    threads=options.threads,
                    processes=options.processes,
                    transfer=OutcomeTransfer(),
                )
                with contextlib.closing(outcomes):  # workers stopped now, also on failure
                    for outcome in outcomes:
                        record_outcome(outcome, writer, builder, input_url, options.on_error)
                        if progress is not None:
                            progress.advance(tar.offset, 1)
                if every_sample_failed(builder.counts):  # raised here: nothing is published
                    first = builder.failed.first
                    assert first is not None
                    raise DataError(
                        input_url,
                        f"{first['reason']} (and so did all {len(builder.failed)} samples of "
                        "the shard: nothing is published)",
                        key=first["key"],
                    )
                size, sha256 = writer.close()
                opened.confirm_unchanged(input_url)  # read whole from one version: publish
                remove_stale_manifest(output_url, options.storage_options)
        except OSError as exc:
            raise ShardError(input_url, f"cannot write {output_url}: {exc}") from None
    seconds = time.monotonic() - started
    manifest = builder.build(
        output_size=size,
        output_sha256=sha256,
        input_bytes=tar.offset,
        input_identity=opened.identity,
        ignored_members=samples.ignored_members,
        timings={
            "started": started_at,
            "seconds": round(seconds, 3),
            "samples_per_second": round(builder.counts["read"] / seconds, 2) if seconds else None,
        },
        threads=options.threads,
        png_encoders=pipeline.png_encoders,
        implementations=pipeline.implementations,
    )
    try:
        write_manifest(manifest_at, manifest, options.storage_options)
    except OSError as exc:
        raise ShardError(input_url, f"cannot write the manifest {manifest_at}: {exc}") from None
    return manifest


class OutcomeTransfer(Transfer[Outcome]):
    """A written sample's members cross from a worker process through shared memory: the
    parent writes them to the tar from there, with no pickled megabyte per sample."""

    def pack(self, result: Outcome, buffer: memoryview) -> Any:
        if result.members is None:
            return None  # dropped or failed: small, pickled as it is
        placed, offset = [], 0
        for name, data in result.members:
            start = offset
            for part in data.parts if isinstance(data, Pieces) else (data,):
                end = offset + len(part)
                if end > len(buffer):
                    return None
                buffer[offset:end] = part
                offset = end
            placed.append((name, start, offset))
        return result.key, placed

    def unpack(self, packed: Any, buffer: memoryview) -> Outcome:
        key, placed = packed
        return Outcome(key, members=[(name, buffer[start:end]) for name, start, end in placed])


def record_outcome(
    outcome: Outcome,
    writer: TarWriter,
    builder: ManifestBuilder,
    shard: str,
    on_error: OnError,
    source: dict[str, str] | None = None,
) -> None:
    """Write a sample's members and list it in the manifest (with `source`, its lineage), or
    list it as dropped or failed; DataError when the shard must fail."""
    if outcome.members is not None:
        for name, data in outcome.members:
            try:
                writer.add(name, data)
            except UnsafeMemberName as exc:
                raise DataError(shard, str(exc), key=outcome.key) from None
        builder.add_written(outcome.key, outcome.members, source)
    elif outcome.dropped is not None:
        builder.add_dropped(outcome.key, outcome.dropped)
    else:
        assert outcome.failed is not None
        if on_error == "fail":
            raise DataError(shard, f"{outcome.failed} (--on-error fail)", key=outcome.key)
        builder.add_failed(outcome.key, outcome.failed)


def batch_exit_code(results: list[ShardResult]) -> int:
    """0 when no shard failed; 3 when every failure is the data's (a retry would fail the
    same way); 137 when a worker process was killed (most likely for memory: the retry gets
    more); otherwise 1, so a retry redoes the shards that may pass (and only those without
    output: --skip-existing)."""
    return exit_code_for({r.exit_code for r in results if r.status == "failed"})


def exit_code_of(death: WorkerDied) -> int:
    """137 for a worker killed outright (most likely for memory: Argo's retry gets more),
    else 1."""
    return EXIT_KILLED if death.signal_number == signal.SIGKILL else EXIT_FAILED


def exit_code_for(codes: set[int]) -> int:
    """The step's exit status for its failed shards' codes (batch_exit_code's rule)."""
    if not codes:
        return EXIT_OK
    if EXIT_KILLED in codes:
        return EXIT_KILLED
    return EXIT_DATA if codes == {EXIT_DATA} else EXIT_FAILED
