"""`shardflow verify OUTPUTS`: prove every output shard is complete and right (the DAG's last
step, and a command people run by hand)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from . import storage
from .cli_common import (
    add_command,
    add_output_arguments,
    add_storage_arguments,
    non_negative_int,
    positive_int,
    show_bar,
    storage_options,
)
from .contact_sheet import SheetRow, choose_shards, make_tile, render_sheet, wanted_extension
from .cpus import IO_THREADS_HELP, io_threads
from .errors import EXIT_FAILED, EXIT_OK, ShardError, ShardflowError, UsageError
from .failures import add_max_failed_argument, too_many_failed
from .manifest import manifest_url
from .pairing import Write, index_writes, refuse_aliases, shards_to_read, shards_to_read_from
from .progress import ARGO_PROGRESS_FILE, Progress
from .redact import redact_url
from .reshard_lineage import check_lineage, plan_outputs
from .shard_index import index_outputs
from .verify import ShardReport, check_pairing, missing_problem, verify_shard
from .verify_identity import check_input_identity
from .verify_report import TABLE_ROWS, format_table, report_document, summary_line

MAX_SHEET_PIXELS = 64_000_000

DESCRIPTION = """\
Verify output shards: stream each one once (hashing it, never holding member data) and check
it against the manifest the augment step wrote beside it: the archive is whole (header
checksums, member data, end-of-archive blocks), its size and sha256 are the manifest's, the
member list and sizes are the manifest's, every sample has exactly the expected members, no
key repeats, the sample count is the manifest's written count, and not every sample failed;
over all shards, at most --max-failed of the samples read failed. With --inputs, outputs and
inputs are paired by position: each output must come from its paired input, still the
version the manifest records (ETag, version, size and modification time), and each input
must have exactly one output. With --plan WORK (the outputs of `shardflow reshard`), the
lineage each manifest records is checked against the plan and the inputs' inventory: every
kept input sample is in exactly one output, none is invented, and each output holds what its
plan line says.

Prints a table (one row per shard) and, as the last line, a one-line summary.

exit status: 0 every shard passed, 1 a shard failed, 2 usage error (nothing was checked)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "verify", DESCRIPTION, "verify output shards against their manifests"
    )
    parser.add_argument(
        "outputs",
        metavar="OUTPUTS",
        nargs="?",
        help="output shard URL or brace pattern (with --plan: by default the plan's outputs)",
    )
    parser.add_argument(
        "--plan",
        metavar="WORK",
        help="the work folder of a reshard (its .reshard/ beside the outputs): also check the "
        "lineage: every kept input sample is in exactly one output, none is invented, each "
        "output holds what its plan line says",
    )
    parser.add_argument(
        "--inputs",
        metavar="INPUTS",
        help="the input shards, a pattern expanding to as many URLs as OUTPUTS (paired by "
        "position)",
    )
    parser.add_argument(
        "--expect",
        metavar="EXTS",
        help="members every sample must have, e.g. png,cls (default: the manifest's expect)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help=f"shards checked at once {IO_THREADS_HELP}",
    )
    files = parser.add_argument_group("files written (any fsspec URL)")
    files.add_argument("--report", metavar="URL", help="write the JSON report here")
    files.add_argument(
        "--summary-file",
        metavar="URL",
        help="write the one-line summary here (for an Argo output parameter)",
    )
    files.add_argument(
        "--sample-sheet",
        metavar="URL",
        help="write a contact sheet PNG of a few output images, labelled with key and class",
    )
    files.add_argument(
        "--sheet-shards",
        type=non_negative_int,
        default=4,
        help="shards shown on the sample sheet, spread over OUTPUTS (default: 4)",
    )
    files.add_argument(
        "--sheet-samples",
        type=positive_int,
        default=4,
        help="samples shown per shard, its first ones (default: 4)",
    )
    files.add_argument(
        "--write-index",
        action="store_true",
        help="when every shard passes, write the dataset index beside them from the manifests "
        "(PREFIX.shardindex.json for wids, sizes.json; see shardflow index)",
    )
    parser.add_argument(
        "--all-rows",
        action="store_true",
        help=f"list every shard in the table (default: above {TABLE_ROWS} shards, only those "
        "with problems; the report always has every shard)",
    )
    add_max_failed_argument(parser)
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    if args.outputs is None and args.plan is None:
        raise UsageError("give OUTPUTS, or --plan WORK for the outputs of a reshard")
    if args.plan and args.inputs:
        raise UsageError("--inputs pairs outputs with inputs; a reshard's --plan says more")
    outputs, inputs = _shards(args.outputs, args.inputs, args.plan, options)
    expect = parse_expect(args.expect)
    writes = [
        Write(url, what)
        for url, what in (
            (args.report, "--report"),
            (args.summary_file, "--summary-file"),
            (args.sample_sheet, "--sample-sheet"),
        )
        if url
    ]
    for write in writes:
        storage.check_url(write.url, writing=True)
    writes += index_writes(outputs)  # written when every shard passes
    refuse_aliases([*outputs, *map(manifest_url, outputs), *(inputs or [])], writes)
    started = time.monotonic()
    reports, rows = _check_all(outputs, inputs, expect, options, args)
    if inputs:
        check_pairing(reports, inputs)
    lineage = check_lineage(args.plan, reports, options) if args.plan else None
    seconds = time.monotonic() - started
    read, failed = (sum(r.counts.get(name, 0) for r in reports) for name in ("read", "failed"))
    failures = (
        "; ".join(
            problem
            for problem in (lineage, too_many_failed(read, failed, args.max_failed))
            if problem is not None
        )
        or None
    )
    summary = summary_line(reports, seconds, failures)
    document = report_document(args, expect, reports, summary, seconds)
    document["summary"].update(samples_read=read, samples_failed=failed, max_failed=args.max_failed)
    document["passed"] = document["passed"] and failures is None
    if args.json:
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.quiet:
        for report in reports:
            for problem in report.problems:
                print(f"shardflow verify: {redact_url(report.output)}: {problem}", file=sys.stderr)
    else:
        limit = None if args.all_rows else TABLE_ROWS
        print(format_table(reports, passing_rows_up_to=limit), flush=True)
    written = _write_files(args, options, document, summary, rows)
    if args.write_index:
        written += _write_index(outputs, reports, options)
    if not (args.json or args.quiet):
        for line in written:
            print(line)
        print(summary, flush=True)  # the last line: what the DAG shows
    return EXIT_OK if document["passed"] else EXIT_FAILED


def _check_all(
    outputs: list[str],
    inputs: list[str] | None,
    expect: list[str] | None,
    options: storage.StorageOptions,
    args: argparse.Namespace,
) -> tuple[list[ShardReport], list[SheetRow]]:
    """Every shard checked in a bounded pool of threads (the work is I/O and hashing, both
    outside the GIL); reports in OUTPUTS order, and the sample sheet's rows."""
    sheet_positions = (
        set(choose_shards(len(outputs), args.sheet_shards)) if args.sample_sheet else set()
    )

    def check(position: int) -> tuple[ShardReport, SheetRow | None]:
        keep = args.sheet_samples if position in sheet_positions else 0
        report = verify_shard(
            outputs[position],
            options,
            expect=expect,
            input_url=inputs[position] if inputs else None,
            keep_samples=keep,
            keep=wanted_extension,
        )
        row = None
        if keep:  # thumbnails now, in this worker, so full images are never held for long
            tiles = [make_tile(s, max_pixels=MAX_SHEET_PIXELS) for s in report.kept]
            row = SheetRow(outputs[position], tiles)
        report.kept = []
        check_input_identity(report, options)
        return report, row

    progress = Progress(
        len(outputs),
        bar=show_bar(args),
        argo_file=os.environ.get(ARGO_PROGRESS_FILE) or None,
        desc="verify",
    )
    reports = _known_missing(outputs, inputs, options)
    rows = {i: SheetRow(outputs[i], []) for i in reports if i in sheet_positions}
    for _ in reports:
        progress.shard_finished()
    threads = io_threads(args.threads)
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:
            futures = {pool.submit(check, i): i for i in range(len(outputs)) if i not in reports}
            for future in as_completed(futures):
                position = futures[future]
                reports[position], row = future.result()
                if row is not None:
                    rows[position] = row
                progress.advance(0, reports[position].samples)
                progress.shard_finished()
    finally:
        progress.close()
    return [reports[i] for i in range(len(outputs))], [rows[i] for i in sorted(rows)]


def _known_missing(
    outputs: list[str], inputs: list[str] | None, options: storage.StorageOptions
) -> dict[int, ShardReport]:
    """Reports for the shards that their folders' listings show missing, with no manifest
    either: nothing to read, so no request per shard."""
    manifests = [manifest_url(url) for url in outputs]
    absent = storage.absent(outputs + manifests, options)
    reports = {}
    for position, url in enumerate(outputs):
        if url in absent and manifests[position] in absent:
            input_url = inputs[position] if inputs else None
            report = ShardReport(url, input=input_url)
            report.problems.append(missing_problem(input_url, manifest_exists=False))
            reports[position] = report
    return reports


def _shards(
    output_pattern: str | None,
    input_pattern: str | None,
    plan: str | None,
    options: storage.StorageOptions,
) -> tuple[list[str], list[str] | None]:
    if output_pattern is None:
        assert plan is not None
        try:
            outputs = shards_to_read_from(plan_outputs(plan, options))
        except ShardError as exc:
            raise UsageError(str(exc)) from None
    else:
        outputs = shards_to_read(output_pattern)
    if input_pattern is None:
        return outputs, None
    inputs = storage.expand(input_pattern)
    if len(inputs) != len(outputs):
        raise UsageError(
            f"{len(inputs)} input shards but {len(outputs)} output shards: --inputs must "
            "expand to as many URLs as OUTPUTS (they are paired by position)"
        )
    return outputs, inputs


def parse_expect(text: str | None) -> list[str] | None:
    """`png,cls` -> ["png", "cls"]; extensions as samples.split_member_name gives them."""
    if text is None:
        return None
    extensions = [part.strip().lower() for part in text.split(",")]
    if not all(extensions) or any("/" in e or e.startswith(".") for e in extensions):
        raise UsageError(f"--expect {text!r} is not a comma-separated list of extensions")
    if len(set(extensions)) != len(extensions):
        raise UsageError(f"--expect {text!r} names an extension twice")
    return extensions


def _write_files(
    args: argparse.Namespace,
    options: storage.StorageOptions,
    document: dict[str, Any],
    summary: str,
    rows: list[SheetRow],
) -> list[str]:
    """Write the report, sheet and summary file; the lines saying what was written."""
    said = []
    try:
        if args.report:
            data = json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
            storage.write_atomically(args.report, data, options)
            said.append(f"report: {redact_url(args.report)}")
        if args.sample_sheet:
            storage.write_atomically(args.sample_sheet, render_sheet(rows), options)
            tiles = sum(len(row.tiles) for row in rows)
            said.append(f"sample sheet: {redact_url(args.sample_sheet)} ({tiles} samples)")
        if args.summary_file:
            storage.write_atomically(args.summary_file, summary.encode("utf-8") + b"\n", options)
    except OSError as exc:
        raise ShardflowError(f"cannot write the verification files: {exc}") from None
    return said


def _write_index(
    outputs: list[str], reports: list[ShardReport], options: storage.StorageOptions
) -> list[str]:
    """The index of a verified dataset: a run on Argo ends with it, as a local run does."""
    if not all(r.status == "ok" for r in reports):
        return ["index: not written, not every shard passed"]
    try:
        return [f"index: {url}" for url in index_outputs(outputs, options)]
    except (ShardflowError, OSError) as exc:
        raise ShardflowError(f"cannot write the dataset index: {exc}") from None
