"""One reshard output: its plan line in, one shard and its manifest out.

The task reads its line of the plan (reshard_plan.py), checks that every input it names is
still the version counted (an input replaced since would put other bytes at the planned
offsets), fetches its samples by byte range (ranged_read.py: requests in flight, order
kept), and writes them with the deterministic writer augment uses, published atomically,
manifest last. Without a recipe each member is copied byte for byte (no decoding), renamed
only when its key was (--rename-duplicates); with one, each sample goes through the recipe
on the way. The same line gives the same bytes: a rerun, or another machine, writes an
identical shard, and `--skip-existing` trusts a manifest that records the line's sha256.

Each sample in the manifest says where it came from (`"from": {shard, key}`): the lineage
`shardflow verify --plan` checks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import storage
from .augment import OnError, ShardResult, record_outcome
from .errors import EXIT_FAILED, DataError, ShardError, ShardflowError, UsageError
from .failures import every_sample_failed
from .input_identity import difference
from .manifest import ManifestBuilder, ManifestError, manifest_url, read_manifest, write_manifest
from .parallel import ordered_map
from .pipeline import Outcome, Pipeline
from .ranged_read import RequestCount, Source, Span, fetch_spans, open_source, serves_ranges
from .redact import redact_text
from .reshard_plan import plan_urls, read_line, renamed
from .samples import RawSample, split_member_name
from .storage_faults import describe
from .tar_writer import TarWriter
from .verify import manifest_view

COPY = "copy"  # the recipe name recorded for byte-for-byte copies


@dataclass
class WriteOptions:
    storage_options: storage.StorageOptions = field(default_factory=dict)
    threads: int = 8  # requests in flight
    recipe_threads: int | None = None  # threads running the recipe (None: `threads`)
    skip_existing: bool = False
    pipeline: Pipeline | None = None  # None: members copied byte for byte
    on_error: OnError = "skip"
    need_ranges: bool = False  # --shuffle: an input that cannot serve ranges is refused
    checked: dict[str, bool] = field(default_factory=dict)  # input url -> serves ranges
    # The plan is a file anyone with write access to the work folder could edit: a line may
    # name only outputs of OUTPUTS (at their own position) and inputs of INPUTS.
    inputs: frozenset[str] | None = None
    output_url: Callable[[int], str] | None = None

    @property
    def recipe_hash(self) -> str:
        return self.pipeline.recipe_hash if self.pipeline is not None else COPY


def write_output(work: str, index: int, options: WriteOptions) -> ShardResult:
    """Write output `index` of the plan; never raises for a shard-level problem."""
    started = time.monotonic()
    url = f"output {index} of the plan"
    requests = RequestCount()  # this output's ranged reads (also from a worker process)
    try:
        raw = read_line(work, index, options.storage_options)
        line = json.loads(raw)
        url = line["url"]
        _check_line(line, index, options)
        entry = "sha256:" + hashlib.sha256(raw).hexdigest()
        done = _already_done(url, entry, options) if options.skip_existing else None
        if done is not None:
            return ShardResult(work, url, "skipped", counts=done[0], output_size=done[1])
        manifest = _write(work, line, entry, options, started, requests)
    except ShardflowError as exc:  # a shard's failure, or an input refused (usage)
        return ShardResult(
            work,
            url,
            "failed",
            error=redact_text(str(exc)),
            exit_code=exc.exit_code,
            seconds=time.monotonic() - started,
            requests=requests.value,
        )
    except Exception as exc:  # a back-end or library failure must not end the batch
        error = redact_text(f"{url}: unexpected {type(exc).__name__}: {exc}")
        return ShardResult(
            work, url, "failed", error=error, exit_code=EXIT_FAILED, requests=requests.value
        )
    return ShardResult(
        work,
        url,
        "written",
        counts=manifest["counts"],
        seconds=time.monotonic() - started,
        output_size=manifest["output_size"],
        requests=requests.value,
    )


def _check_line(line: dict[str, Any], index: int, options: WriteOptions) -> None:
    """UsageError for a plan line that names an output or an input this run was not given."""
    if options.output_url is not None and line.get("url") != options.output_url(index):
        raise UsageError(
            f"plan line {index} names the output {line.get('url')!r}, not "
            f"{options.output_url(index)!r} of OUTPUTS: the plan is of another run"
        )
    if options.inputs is not None:
        for ref in line.get("inputs", []):
            if ref.get("url") not in options.inputs:
                raise UsageError(
                    f"plan line {index} reads {ref.get('url')!r}, which is not one of INPUTS: "
                    "the plan is of another run"
                )


def _already_done(url: str, entry: str, options: WriteOptions) -> tuple[dict, int] | None:
    """(counts, size) of a finished output of the same plan line and recipe."""
    try:
        manifest = read_manifest(manifest_url(url), options.storage_options)
        view = manifest_view(manifest) if manifest is not None else None
    except ManifestError:
        return None
    if manifest is None or view is None:
        return None
    reshard = manifest.get("reshard")
    if not isinstance(reshard, dict) or reshard.get("entry_sha256") != entry:
        return None
    if manifest.get("recipe_hash") != options.recipe_hash:
        return None
    if storage.size(url, options.storage_options, stored=True) != view.output_size:
        return None
    return view.counts, view.output_size


def _check_inputs(refs: list[dict[str, Any]], options: WriteOptions) -> list[bool]:
    """Whether each input serves ranges; ShardError for one that changed since counted."""
    ranged = []
    for ref in refs:
        url = ref["url"]
        if url not in options.checked:
            confirm_unchanged(ref, options.storage_options)
            options.checked[url] = serves_ranges(url, options.storage_options)
        if options.need_ranges and not options.checked[url]:
            raise UsageError(refuse_message(url))
        ranged.append(options.checked[url])
    return ranged


def confirm_unchanged(ref: dict[str, Any], options: storage.StorageOptions) -> None:
    """DataError when the input is no longer the version counted: the plan's offsets are of
    that version (a retry fails the same way; count and plan again), ShardError when it
    cannot be asked."""
    url = ref["url"]
    try:
        current = storage.current_identity(url, options)
    except Exception as exc:  # any back-end's error names the input
        raise ShardError(url, f"cannot read the input: {describe(exc)}") from None
    moved = difference(ref["identity"], current) if ref["identity"] else None
    if moved is not None:
        raise DataError(
            url, f"the input changed since it was counted ({moved}): count and plan again"
        )


def refuse_message(url: str) -> str:
    if storage.compression_of(url):
        cause = "a compressed input has no byte ranges to read a sample from"
    else:
        cause = "the server does not serve byte ranges (it answers a Range request with the "
        cause += "whole object)"
    return (
        f"{url}: {cause}, which --shuffle needs to fetch samples from many inputs; reshard "
        "without --shuffle reads such inputs in order, or decompress or copy them to "
        "storage that serves ranges"
    )


def _spans(samples: list[list[Any]]) -> Iterator[Span]:
    for source, _, _, members in samples:
        first, last = members[0], members[-1]
        yield Span(source, first[1], last[1] + last[2])


def _raw_samples(
    samples: list[list[Any]],
    sources: list[Source],
    refs: list[dict[str, Any]],
    threads: int,
    requests: RequestCount,
) -> Iterator[tuple[list[Any], list[tuple[str, memoryview]]]]:
    """Each planned sample with its members' bytes, renamed as the plan says."""
    urls = [ref["url"] for ref in refs]
    spans = fetch_spans(_spans(samples), sources, urls, threads=threads, requests=requests)
    for sample, data in zip(samples, spans, strict=True):
        _, key, new_key, members = sample
        start = members[0][1]
        yield (
            sample,
            [
                (renamed(name, key, new_key), data[offset - start : offset - start + size])
                for name, offset, size in members
            ],
        )


def _outcome(pipeline: Pipeline | None, key: str, members: list[tuple[str, memoryview]]) -> Outcome:
    if pipeline is None:
        return Outcome(key, members=members)  # type: ignore[arg-type]  # views: written as is
    raw = RawSample(key)
    for name, data in members:
        parts = split_member_name(name)
        assert parts is not None
        raw.sizes[parts[1]] = len(data)
        if pipeline.wants(parts[1]):
            raw.data[parts[1]] = bytes(data)
    return pipeline.process(raw)


def _write(
    work: str,
    line: dict[str, Any],
    entry: str,
    options: WriteOptions,
    started: float,
    requests: RequestCount,
) -> dict[str, Any]:
    url = line["url"]
    refs = line["inputs"]
    ranged = _check_inputs(refs, options)
    pipeline = options.pipeline
    builder = ManifestBuilder(
        input=storage.comparable_url(plan_urls(work)[0]),
        output=storage.comparable_url(url),
        recipe=pipeline.canonical_recipe if pipeline else {"name": COPY},
        recipe_hash=options.recipe_hash,
        expect=pipeline.expected_extensions if pipeline else None,
        options={"on_error": options.on_error},
    )
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sources: list[Source] = []
    threads = options.threads if all(ranged) else 1  # a stream is read in order
    read = 0
    try:
        for ref, can_range in zip(refs, ranged, strict=True):
            sources.append(open_source(ref["url"], options.storage_options, ranged=can_range))
        with storage.publish_atomically(url, options.storage_options) as sink:
            writer = TarWriter(sink, gzipped=storage.compression_of(url) == "gzip")
            fetched = _raw_samples(line["samples"], sources, refs, threads, requests)

            def process(item: tuple[list[Any], list[tuple[str, memoryview]]]) -> Outcome:
                sample, members = item
                return _outcome(pipeline, sample[2] or sample[1], members)

            work_threads = 1 if pipeline is None else (options.recipe_threads or options.threads)
            for sample, outcome in zip(
                line["samples"], ordered_map(process, fetched, threads=work_threads), strict=True
            ):
                source = {"shard": refs[sample[0]]["url"], "key": sample[1]}
                record_outcome(outcome, writer, builder, url, options.on_error, source)
                read += sum(member[2] for member in sample[3])
            for ref in refs:  # read whole from the versions counted, or not published
                confirm_unchanged(ref, options.storage_options)
            if every_sample_failed(builder.counts):  # raised here: nothing is published
                first = builder.failed.first or {}
                raise DataError(url, f"every sample failed, the first: {first.get('reason')}")
            size, sha256 = writer.close()
            storage.remove(manifest_url(url), options.storage_options)
    except OSError as exc:
        raise ShardError(url, f"cannot write: {exc}") from None
    finally:
        for opened in sources:
            opened.close()
    seconds = time.monotonic() - started
    manifest = builder.build(
        output_size=size,
        output_sha256=sha256,
        input_bytes=read,
        input_identity=None,
        ignored_members=[],
        timings={"started": started_at, "seconds": round(seconds, 3)},
        threads=options.threads,
    )
    manifest["reshard"] = {
        "plan": storage.comparable_url(plan_urls(work)[0]),
        "output": line["output"],
        "entry_sha256": entry,
        "oversized": line["oversized"],
    }
    try:
        write_manifest(manifest_url(url), manifest, options.storage_options)
    except OSError as exc:
        raise ShardError(url, f"cannot write the manifest: {exc}") from None
    return manifest
