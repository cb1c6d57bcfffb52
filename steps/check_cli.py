"""`shardflow check SHARDS`: lint any shards, read-only; `--repair OUTPUTS` rewrites the
shards a rewrite can fix."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import storage
from .check import ShardScan, field_problems, scan_shard, usual_fields
from .cli_common import (
    add_command,
    add_io_threads_argument,
    add_output_arguments,
    add_storage_arguments,
    show_bar,
    storage_options,
)
from .cpus import io_threads
from .errors import EXIT_FAILED, EXIT_OK, ShardError
from .pairing import check_urls, pair_shards, shards_to_read
from .progress import ARGO_PROGRESS_FILE, Progress
from .repair import repair_shard
from .storage_faults import describe
from .verify import Problem, ShardReport
from .verify_report import TABLE_ROWS, format_table, summary_line

REPORT_FORMAT = "shardflow.check/1"

DESCRIPTION = """\
Check shards written by anyone, read-only: each shard's headers are read once (member data is
skipped by seeking where the storage allows) and every problem is reported, not only the
first: truncation and corrupt headers, data after the end-of-archive blocks, keys that come
back after other samples (split samples), PAX headers, links and devices, unsafe names,
members without an extension, empty members, upper-case extensions, names over 100 bytes,
dots in base names that change the key, and samples whose members are not the dataset's
usual ones. Prints a table and a one-line summary (--json: one JSON document).

--repair OUTPUTS rewrites every shard without an unrepairable problem (truncated, corrupt,
duplicate members, unsafe names, links) to OUTPUTS (paired by position, or a directory/):
members grouped by key, plain GNU headers, no trailing data, published atomically with a
manifest. Unrepairable shards are listed and nothing is written for them.

exit status: 0 no problem found (with --repair: every shard written), 1 problems found (with
--repair: a shard could not be repaired), 2 usage error."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "check",
        DESCRIPTION,
        "lint any shards read-only (split keys, PAX, truncation, ...); --repair",
    )
    parser.add_argument("shards", metavar="SHARDS", help="shard URL or brace pattern")
    parser.add_argument(
        "--repair",
        metavar="OUTPUTS",
        help="write repaired shards here: a pattern expanding to as many URLs as SHARDS, or a "
        "directory ending in /",
    )
    add_io_threads_argument(parser, doing="shards checked at once")
    parser.add_argument(
        "--all-rows",
        action="store_true",
        help=f"list every shard in the table (default: above {TABLE_ROWS} shards, only those "
        "with problems)",
    )
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    shards = shards_to_read(args.shards)
    pairs = _repair_pairs(args.shards, args.repair) if args.repair else []
    started = time.monotonic()
    scans = check_all(shards, options, args)
    repairs = (
        [_repair(scan, output, options) for scan, (_, output) in zip(scans, pairs, strict=True)]
        if pairs
        else []
    )
    seconds = time.monotonic() - started
    reports = [_report(scan) for scan in scans]
    summary = summary_line(reports, seconds, command="check")
    if args.json:
        document = _document(args, reports, repairs, summary, seconds)
        json.dump(document, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    elif args.quiet:
        for report in reports:
            for problem in report.problems:
                print(f"shardflow check: {report.output}: {problem}", file=sys.stderr)
    else:
        limit = None if args.all_rows else TABLE_ROWS
        print(format_table(reports, passing_rows_up_to=limit))
        for line in repairs:
            print(line["line"])
        print(summary, flush=True)
    if args.repair:
        return EXIT_OK if all(r["status"] == "written" for r in repairs) else EXIT_FAILED
    return EXIT_OK if all(r.status == "ok" for r in reports) else EXIT_FAILED


def _repair_pairs(shards: str, outputs: str) -> list[tuple[str, str]]:
    """SHARDS paired with OUTPUTS by position, refused before any work when an output or its
    manifest would be written over a shard (resolved locations, as augment pairs them)."""
    pairs = pair_shards(shards, outputs)
    check_urls(pairs)
    return pairs


def check_all(
    shards: list[str], options: storage.StorageOptions, args: argparse.Namespace
) -> list[ShardScan]:
    """Every shard scanned by a pool of threads, then compared with the dataset's usual
    fields; scans in SHARDS order."""
    progress = Progress(
        len(shards),
        bar=show_bar(args),
        argo_file=os.environ.get(ARGO_PROGRESS_FILE) or None,
        desc="check",
    )
    threads = io_threads(args.threads)
    scans = []
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="check") as pool:
            repair = bool(args.repair)
            for scan in pool.map(lambda url: check_shard(url, options, repair), shards):
                scans.append(scan)
                progress.advance(0, scan.samples)
                progress.shard_finished()
    finally:
        progress.close()
    usual = usual_fields(scans)
    if usual is not None:
        for scan in scans:
            scan.problems += field_problems(scan, usual)
    return scans


def check_shard(url: str, options: storage.StorageOptions, repair: bool = False) -> ShardScan:
    """One shard's scan; never raises for a shard that is missing or cannot be read."""
    try:
        if not storage.exists(url, options):
            return ShardScan(url, problems=[Problem("missing", "missing: no shard at this URL")])
        identity = storage.current_identity(url, options) if repair else None
        size = storage.size(url, options)
        if size is None:  # compressed or piped: a stream, read through
            with storage.open_input(url, options) as stream:
                return scan_shard(url, stream, seek_size=None, keep_members=repair)
        with storage.open_ranged(url, options) as stream:
            scan = scan_shard(url, stream, seek_size=size, keep_members=repair)
        scan.identity = identity
        return scan
    except Exception as exc:  # any back-end's error: a verdict for this shard, not a crash
        cause = exc.cause if isinstance(exc, ShardError) else describe(exc)
        return ShardScan(url, problems=[Problem("unreadable", f"cannot read the shard: {cause}")])


def _repair(scan: ShardScan, output: str, options: storage.StorageOptions) -> dict[str, Any]:
    kinds = scan.unrepairable()
    if kinds:
        line = f"not repaired: {scan.url}: {', '.join(kinds)} cannot be repaired"
        return {"shard": scan.url, "output": output, "status": "unrepairable", "line": line}
    if storage.size(scan.url, options) is None:
        line = f"not repaired: {scan.url}: a compressed or piped shard cannot be read by ranges"
        return {"shard": scan.url, "output": output, "status": "unrepairable", "line": line}
    try:
        samples = repair_shard(scan, output, options)
    except ShardError as exc:
        line = f"not repaired: {exc}"
        return {"shard": scan.url, "output": output, "status": "failed", "line": line}
    except Exception as exc:  # any back-end's error: nothing was published for this shard
        line = f"not repaired: {scan.url}: {describe(exc)}"
        return {"shard": scan.url, "output": output, "status": "failed", "line": line}
    line = f"repaired: {scan.url} -> {output} ({samples} samples)"
    return {"shard": scan.url, "output": output, "status": "written", "line": line}


def _report(scan: ShardScan) -> ShardReport:
    return ShardReport(
        scan.url,
        samples=scan.samples,
        members=scan.member_count,
        bytes=scan.size,
        problems=scan.problems,
    )


def _document(
    args: argparse.Namespace,
    reports: list[ShardReport],
    repairs: list[dict[str, Any]],
    summary: str,
    seconds: float,
) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "shards_pattern": args.shards,
        "passed": all(r.status == "ok" for r in reports),
        "summary": {"line": summary, "shards": len(reports), "seconds": round(seconds, 3)},
        "shards": [
            {
                "shard": r.output,
                "status": r.status,
                "samples": r.samples,
                "members": r.members,
                "bytes": r.bytes,
                "problems": [p.to_dict() for p in r.problems],
            }
            for r in reports
        ],
        "repairs": [{k: v for k, v in r.items() if k != "line"} for r in repairs],
    }
