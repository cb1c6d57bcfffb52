"""`shardflow verify OUTPUTS`: prove every output shard is complete and right (the DAG's last
step, and a command people run by hand)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import storage
from .cli_common import (
    add_command,
    add_io_threads_argument,
    add_output_arguments,
    add_storage_arguments,
    non_negative_int,
    positive_int,
    show_bar,
    storage_options,
)
from .contact_sheet import SheetRow, choose_shards, render_sheet
from .errors import EXIT_FAILED, EXIT_OK, ShardError, ShardflowError, UsageError
from .failures import add_max_failed_argument, too_many_failed
from .images import rely_on_own_pixel_limit
from .manifest import manifest_url
from .pairing import (
    Batch,
    Write,
    index_writes,
    refuse_aliases,
    shards_to_read,
    shards_to_read_from,
    task_count,
)
from .redact import redact_url
from .reshard_lineage import check_lineage, plan_outputs
from .shard_index import ShardIndex, default_index_url, write_counts
from .spool_sort import SortedSpool
from .verify import ShardReport, check_pairing
from .verify_batch import (
    Part,
    Settings,
    check_batch,
    part_url,
    read_part,
    remove_part,
    write_merged_report,
    write_part,
)
from .verify_files import dataset_report_writes
from .verify_report import TABLE_ROWS, format_table, report_document, summary_line

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

In batches (the Argo fan-out): --task-index I checks batch I only and publishes its part in
--parts; --merge then reads every part (no shard) and prints and writes what one process
checking every shard would.

exit status: 0 every shard passed (with --task-index: the part is written, whatever it
found), 1 a shard failed (or the part could not be written or read), 2 usage error (nothing
was checked)."""


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
    add_io_threads_argument(parser, doing="shards checked at once")
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
    files.add_argument(
        "--dataset-report",
        metavar="DIR",
        help="hash every member and write the per-sample table (DIR/dataset-samples/), the "
        "dataset report, its plots and the duplicate images in DIR (see shardflow report)",
    )
    batches = parser.add_argument_group(
        "in batches (an Argo fan-out: one --task-index per pod, then one --merge)"
    )
    batches.add_argument(
        "--task-index",
        type=non_negative_int,
        help="check only batch I of OUTPUTS and write its part in --parts",
    )
    batches.add_argument(
        "--shards-per-task", type=positive_int, metavar="N", help="shards in each batch"
    )
    batches.add_argument(
        "--parts", metavar="URL", help="folder of the batches' parts (written, then merged)"
    )
    batches.add_argument(
        "--merge",
        action="store_true",
        help="read every batch's part and write the report, summary, sheet, index and dataset "
        "report as one process checking every shard would; the parts are removed",
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
    batched = _batch_mode(args)
    writes = [
        Write(url, what)
        for url, what in (
            (args.report, "--report"),
            (args.summary_file, "--summary-file"),
            (args.sample_sheet, "--sample-sheet"),
        )
        if url
    ]
    if args.dataset_report:
        writes += dataset_report_writes(args.dataset_report)
    for write in writes:
        storage.check_url(write.url, writing=True)
    if args.parts:
        storage.check_url(part_url(args.parts, 0), writing=True)
    writes += index_writes(outputs)  # written when every shard passes
    refuse_aliases([*outputs, *map(manifest_url, outputs), *(inputs or [])], writes)
    if args.dataset_report:
        rely_on_own_pixel_limit()  # headers of any size are read, never decoded
    if batched == "batch":
        return _run_batch(args, outputs, inputs, expect, options)
    if batched == "merge":
        parts = _read_parts(args, outputs, options)
        code = _finish(args, outputs, inputs, expect, options, parts)
        for part in parts:
            remove_part(args.parts, part.task, options)
        storage.remove_empty_folder(args.parts)
        return code
    duplicates = SortedSpool()
    try:
        settings = _settings(args, expect, options, outputs)
        part = check_batch(outputs, inputs, range(len(outputs)), 0, settings, duplicates)
        part.duplicates = duplicates.opener()
        return _finish(args, outputs, inputs, expect, options, [part])
    finally:
        duplicates.close()


def _batch_mode(args: argparse.Namespace) -> str | None:
    """ "batch" (--task-index), "merge" (--merge) or None (every shard in this process)."""
    if args.merge and args.task_index is not None:
        raise UsageError("--merge and --task-index exclude each other")
    if (args.merge or args.task_index is not None) and not (args.parts and args.shards_per_task):
        raise UsageError("--task-index and --merge need --parts and --shards-per-task")
    if args.parts and not (args.merge or args.task_index is not None):
        raise UsageError("--parts needs --task-index or --merge")
    if args.task_index is not None:
        return "batch"
    return "merge" if args.merge else None


def _settings(
    args: argparse.Namespace,
    expect: list[str] | None,
    options: storage.StorageOptions,
    outputs: list[str],
) -> Settings:
    sheet = set(choose_shards(len(outputs), args.sheet_shards)) if args.sample_sheet else set()
    return Settings(
        options=options,
        expect=expect,
        sheet_positions=sheet,
        sheet_samples=args.sheet_samples,
        threads=args.threads,
        bar=show_bar(args),
        table_dir=args.dataset_report,
    )


def _run_batch(
    args: argparse.Namespace,
    outputs: list[str],
    inputs: list[str] | None,
    expect: list[str] | None,
    options: storage.StorageOptions,
) -> int:
    """Check one batch and publish its part: the verdict is the merge's, so a batch that
    found problems still succeeds (exit 0) once its part is written."""
    # UsageError if the run has no such batch
    positions = Batch(args.task_index, args.shards_per_task).of(range(len(outputs)))
    duplicates = SortedSpool()
    try:
        settings = _settings(args, expect, options, outputs)
        part = check_batch(outputs, inputs, positions, args.task_index, settings, duplicates)
        url = write_part(args.parts, part, duplicates, options)
    except OSError as exc:
        raise ShardflowError(f"cannot write the part of batch {args.task_index}: {exc}") from None
    finally:
        duplicates.close()
    passed = sum(r.status == "ok" for r in part.reports)
    if not (args.json or args.quiet):
        print(
            f"verify batch {args.task_index}: {passed} of {len(part.reports)} shards passed; "
            f"part {redact_url(url)}",
            flush=True,
        )
    return EXIT_OK


def _read_parts(
    args: argparse.Namespace, outputs: list[str], options: storage.StorageOptions
) -> list[Part]:
    """Every batch's part, checked against the batches the pattern and batch size give."""
    parts = []
    for task in range(task_count(len(outputs), args.shards_per_task)):
        shards = Batch(task, args.shards_per_task).of(outputs)
        try:
            parts.append(read_part(args.parts, task, shards, options))
        except ShardError as exc:
            raise ShardflowError(f"cannot merge the verification: {exc}") from None
    return parts


def _finish(
    args: argparse.Namespace,
    outputs: list[str],
    inputs: list[str] | None,
    expect: list[str] | None,
    options: storage.StorageOptions,
    parts: list[Part],
) -> int:
    """The verdict over every batch: pairing across batches, the failed-sample budget, the
    table, summary, report, sheet, index and dataset report."""
    reports = [report for part in parts for report in part.reports]
    rows = [row for part in parts for row in part.sheet]
    if inputs:
        check_pairing(reports, inputs)
    lineage = check_lineage(args.plan, reports, options, args.threads) if args.plan else None
    seconds = sum(part.seconds for part in parts)
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
    if args.dataset_report:
        written += write_merged_report(args.dataset_report, parts, options)
    if not (args.json or args.quiet):
        for line in written:
            print(line)
        print(summary, flush=True)  # the last line: what the DAG shows
    return EXIT_OK if document["passed"] else EXIT_FAILED


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
    """The index of a verified dataset: a run on Argo ends with it, as a local run does. A
    shard that passed holds exactly the samples and bytes its manifest records, so the
    counts verify found are the manifest's, and no manifest is read again."""
    if not all(r.status == "ok" for r in reports):
        return ["index: not written, not every shard passed"]
    shards = [ShardIndex(r.output, r.bytes, source="manifest", count=r.samples) for r in reports]
    try:
        written = write_counts(shards, default_index_url(outputs), options)
    except (ShardflowError, OSError) as exc:
        raise ShardflowError(f"cannot write the dataset index: {exc}") from None
    return [f"index: {url}" for url in written]
