"""Verify in batches: each batch of shards is checked where it is (one pod of an Argo fan-out,
or the whole dataset in one process) and leaves a part; one light step merges the parts.

A part is what the merge needs and nothing it would have to read shards for:
    PARTS/part-000007.json   {"format": "shardflow.verify-part/1", task, shards (URLs),
                              seconds, reports (one per shard, problems included), sheet
                              (thumbnails of the sample sheet's shards in the batch, as PNG),
                              stats (dataset_report.Stats of the batch)}
    PARTS/part-000007.dups   the batch's image hashes, sorted (spool_sort.py)
and, with a dataset report, the batch's per-sample table, where it stays:
    DIR/dataset-samples/part-000007.jsonl (and .parquet with the `parquet` extra)
Each file is written atomically, the .json last: a part exists only when its batch is done,
so a retried pod redoes the batch. One process verifying every shard makes the same part in
memory and merges it the same way: the single-pod report and the merged one are one code path.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from PIL import Image

from . import storage
from .contact_sheet import TILE, SheetRow, Tile, make_tile, wanted_extension
from .cpus import io_threads
from .dataset_report import Stats, write_dataset_report
from .errors import ShardError, ShardflowError
from .manifest import manifest_url
from .progress import ARGO_PROGRESS_FILE, Progress
from .redact import redact_text, redact_url
from .sample_table import RowSink, RowStaging, duplicate_lines, write_table
from .spool_sort import Opener, SortedSpool, merge_sorted
from .verify import Problem, ShardReport, missing_problem, verify_shard
from .verify_identity import check_input_identity

PART_FORMAT = "shardflow.verify-part/1"
MAX_SHEET_PIXELS = 64_000_000


def part_url(parts: str, task: int, suffix: str = ".json") -> str:
    return f"{parts.rstrip('/')}/part-{task:06d}{suffix}"


@dataclass
class Part:
    """One batch's results: in memory, or read back from PARTS/part-N.json."""

    task: int
    shards: list[str]
    reports: list[ShardReport]
    sheet: list[SheetRow]
    stats: Stats
    seconds: float
    duplicates: Opener | None = None  # its sorted image-hash lines
    tables: list[str] = field(default_factory=list)  # table files written


@dataclass
class Settings:
    """What checking a batch needs beyond its shards (from the command line)."""

    options: storage.StorageOptions
    expect: list[str] | None
    sheet_positions: set[int]  # global positions of the sample sheet's shards
    sheet_samples: int
    threads: int | None
    bar: bool
    table_dir: str | None  # write the per-sample table (and hash the members) when set


def check_batch(
    outputs: list[str],
    inputs: list[str] | None,
    positions: range,
    task: int,
    settings: Settings,
    duplicates: SortedSpool,
) -> Part:
    """Verify the shards at `positions` in a bounded pool of threads (the work is I/O and
    hashing, both outside the GIL); reports in OUTPUTS order; the table written when asked.
    `duplicates` receives the batch's image-hash lines."""
    started = time.monotonic()
    with RowStaging() as staging:
        reports, sheet = _check_all(outputs, inputs, positions, settings, staging)
        tables = []
        if settings.table_dir is not None:
            tables = write_table(staging, settings.table_dir, task, settings.options)
            for line in duplicate_lines(staging):
                duplicates.add(line)
    stats = Stats()
    for report in reports:
        stats.merge(report.stats)
    shards = [outputs[p] for p in positions]
    return Part(task, shards, reports, sheet, stats, time.monotonic() - started, tables=tables)


def _check_all(
    outputs: list[str],
    inputs: list[str] | None,
    positions: range,
    settings: Settings,
    staging: RowStaging,
) -> tuple[list[ShardReport], list[SheetRow]]:
    options = settings.options

    def check(position: int) -> tuple[ShardReport, SheetRow | None, RowSink | None]:
        keep = settings.sheet_samples if position in settings.sheet_positions else 0
        rows = RowSink() if settings.table_dir is not None else None
        report = verify_shard(
            outputs[position],
            options,
            expect=settings.expect,
            input_url=inputs[position] if inputs else None,
            keep_samples=keep,
            keep=wanted_extension,
            rows=rows,
        )
        row = None
        if keep:  # thumbnails now, in this worker, so full images are never held for long
            tiles = [make_tile(s, max_pixels=MAX_SHEET_PIXELS) for s in report.kept]
            row = SheetRow(outputs[position], tiles)
        report.kept = []
        check_input_identity(report, options)
        return report, row, rows

    progress = Progress(
        len(positions),
        bar=settings.bar,
        argo_file=os.environ.get(ARGO_PROGRESS_FILE) or None,
        desc="verify",
    )
    reports = _known_missing(outputs, inputs, positions, options)
    rows = {i: SheetRow(outputs[i], []) for i in reports if i in settings.sheet_positions}
    for _ in reports:
        progress.shard_finished()
    threads = io_threads(settings.threads)
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:
            futures = {pool.submit(check, i): i for i in positions if i not in reports}
            for future in as_completed(futures):
                position = futures[future]
                reports[position], row, sink = future.result()
                if row is not None:
                    rows[position] = row
                if sink is not None:
                    staging.add(position, sink)
                progress.advance(0, reports[position].samples)
                progress.shard_finished()
    finally:
        progress.close()
    return [reports[i] for i in positions], [rows[i] for i in sorted(rows)]


def _known_missing(
    outputs: list[str],
    inputs: list[str] | None,
    positions: range,
    options: storage.StorageOptions,
) -> dict[int, ShardReport]:
    """Reports for the shards that their folders' listings show missing, with no manifest
    either: nothing to read, so no request per shard."""
    wanted = [outputs[p] for p in positions]
    absent = storage.absent(wanted + [manifest_url(url) for url in wanted], options)
    reports = {}
    for position in positions:
        url = outputs[position]
        if url in absent and manifest_url(url) in absent:
            input_url = inputs[position] if inputs else None
            report = ShardReport(url, input=input_url)
            report.problems.append(missing_problem(input_url, manifest_exists=False))
            reports[position] = report
    return reports


# Parts on storage ---------------------------------------------------------------------------


def write_part(
    parts: str, part: Part, duplicates: SortedSpool, options: storage.StorageOptions
) -> str:
    """Publish the batch's sorted hashes, then its part (last: its presence means done)."""
    with storage.publish_atomically(part_url(parts, part.task, ".dups"), options) as out:
        for line in duplicates.sorted_lines():
            out.write(line)
    document = {
        "format": PART_FORMAT,
        "task": part.task,
        "shards": [redact_url(url) for url in part.shards],
        "seconds": part.seconds,
        "reports": [_report_state(r) for r in part.reports],
        "sheet": [
            {"shard": redact_url(row.shard), "tiles": [_tile_state(t) for t in row.tiles]}
            for row in part.sheet
        ],
        "stats": part.stats.to_dict(),
        "tables": part.tables,
    }
    url = part_url(parts, part.task)
    storage.write_atomically(url, json.dumps(document).encode("utf-8"), options)
    return url


def read_part(parts: str, task: int, shards: list[str], options: storage.StorageOptions) -> Part:
    """Batch `task`'s part; ShardError naming it when it is missing, damaged or describes
    other shards than `shards` (a stale part of another run)."""
    url = part_url(parts, task)
    data = storage.read_bytes(url, options)
    if data is None:
        raise ShardError(url, f"missing: batch {task} has not been verified")
    try:
        document = json.loads(data)
        if document.get("format") != PART_FORMAT:
            raise ValueError(f"not a {PART_FORMAT} part")
        if [storage.comparable_url(u) for u in document["shards"]] != [
            storage.comparable_url(u) for u in shards
        ]:
            raise ShardError(url, f"does not describe batch {task} ({shards[0]} ...): stale part?")
        part = Part(
            task=task,
            shards=list(document["shards"]),
            reports=[_report_from(state) for state in document["reports"]],
            sheet=[
                SheetRow(row["shard"], [_tile_from(t) for t in row["tiles"]])
                for row in document["sheet"]
            ],
            stats=Stats.from_dict(document["stats"]),
            seconds=float(document["seconds"]),
            tables=[str(t) for t in document.get("tables", [])],
        )
    except ShardError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ShardError(url, f"not a valid part: {exc}") from None
    part.duplicates = _remote_lines(part_url(parts, task, ".dups"), options)
    return part


def write_merged_report(
    directory: str, parts: list[Part], options: storage.StorageOptions
) -> list[str]:
    """The dataset report of every batch (verify --merge, index --merge): the batches' stats
    summed, their sorted image hashes merged, their per-sample tables listed; the lines
    saying what was written."""
    stats = Stats()
    for part in parts:
        stats.merge(part.stats)
    tables = [table for part in parts for table in part.tables]
    sources = [part.duplicates for part in parts if part.duplicates is not None]
    try:
        return write_dataset_report(directory, stats, merge_sorted(sources), tables, options)
    except (ShardError, OSError) as exc:
        raise ShardflowError(f"cannot write the dataset report: {exc}") from None


def remove_part(parts: str, task: int, options: storage.StorageOptions) -> None:
    for suffix in (".json", ".dups"):
        storage.remove(part_url(parts, task, suffix), options)


# The merge reads every batch's hashes at once (verify_files.MAX_VERIFY_TASKS <=
# spool_sort.FAN_IN, so in one pass, with no spill to disk): small reads keep the buffers to a
# few MB in all.
HASH_READ_BLOCK = 1 << 18


def _remote_lines(url: str, options: storage.StorageOptions) -> Opener:
    @contextlib.contextmanager
    def opener() -> Iterator[BinaryIO]:
        try:
            stream = storage.open_ranged(url, options, block_size=HASH_READ_BLOCK)
        except FileNotFoundError:
            raise ShardError(url, "missing: the part's hashes are not there") from None
        with stream:
            yield stream

    return opener


def _report_state(report: ShardReport) -> dict[str, Any]:
    """A report as a part holds it: URLs without their credentials (the merge compares them
    as manifests record them, storage.comparable_url), so a part holds no secret."""
    return {
        "output": redact_url(report.output),
        "input": None if report.input is None else redact_url(report.input),
        "manifest_input": report.manifest_input,
        "samples": report.samples,
        "members": report.members,
        "bytes": report.bytes,
        "sha256": report.sha256,
        "counts": report.counts,
        "problems": [[p.kind, redact_text(p.message)] for p in report.problems],
    }


def _report_from(state: dict[str, Any]) -> ShardReport:
    return ShardReport(
        output=str(state["output"]),
        input=state["input"],
        manifest_input=state["manifest_input"],
        samples=int(state["samples"]),
        members=int(state["members"]),
        bytes=int(state["bytes"]),
        sha256=state["sha256"],
        counts={str(k): int(v) for k, v in state["counts"].items()},
        problems=[Problem(str(kind), str(message)) for kind, message in state["problems"]],
    )


def _tile_state(tile: Tile) -> dict[str, Any]:
    png = None
    if tile.thumbnail is not None:
        buffer = io.BytesIO()
        tile.thumbnail.save(buffer, "PNG")
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"key": tile.key, "label": tile.label, "png": png}


def _tile_from(state: dict[str, Any]) -> Tile:
    thumbnail = None
    if state["png"] is not None:
        with Image.open(io.BytesIO(base64.b64decode(state["png"])), formats=["PNG"]) as image:
            if image.width > TILE or image.height > TILE:  # parts are read, not trusted
                raise ValueError(f"a thumbnail of {image.width}x{image.height} pixels")
            thumbnail = image.convert("RGB")
    return Tile(str(state["key"]), str(state["label"]), thumbnail)
