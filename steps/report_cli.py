"""`shardflow report SHARDS`: the dataset report of any shards (ours or anyone's): the
per-sample table, counts, histograms, labels and exact duplicate images, from one streaming
pass over each shard. A finished run makes the same report in its last step
(`verify --dataset-report`), from the pass verification already makes."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

from . import storage
from .cli_common import (
    add_command,
    add_io_threads_argument,
    add_output_arguments,
    add_storage_arguments,
    show_bar,
    storage_options,
)
from .cpus import io_threads
from .dataset_report import (
    DUPLICATES_NAME,
    PLOTS,
    REPORT_NAME,
    TABLE_DIR,
    Stats,
    write_dataset_report,
)
from .errors import EXIT_FAILED, EXIT_OK, ShardError, ShardflowError, UsageError
from .images import rely_on_own_pixel_limit
from .manifest import ManifestError, manifest_url, read_manifest
from .pairing import Write, refuse_aliases, shards_to_read
from .progress import Progress
from .redact import redact_url
from .sample_table import RowBuilder, RowSink, RowStaging, duplicate_lines, write_table
from .spool_sort import SortedSpool
from .verify import list_archive

DESCRIPTION = f"""\
Report on shards: stream each one once (several at once), hashing every member and reading
image headers (never decoding pixels), and write in --out:
  {TABLE_DIR}/part-000000.jsonl  one row per sample: key, members with sizes and sha256,
                                   image format, width and height, label (and .parquet with
                                   the `parquet` extra)
  {REPORT_NAME}              counts, drops and failures by reason (from shardflow
                                   manifests, when the shards have them), histograms, labels,
                                   duplicate images
  {", ".join(PLOTS.values())}
  {DUPLICATES_NAME}          every group of identical images (same sha256)
Memory stays flat in the number of samples: rows are spooled to disk and duplicates found by
an external sort.

exit status: 0 report written; 1 a shard is damaged or could not be read (the report is
written and names it); 2 usage error (nothing was read)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "report",
        DESCRIPTION,
        "per-sample table, plots and duplicate images of any shards",
    )
    parser.add_argument("shards", metavar="SHARDS", help="shard URL or brace pattern")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the report (default: the folder of the first shard)",
    )
    add_io_threads_argument(parser, doing="shards read at once")
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    shards = shards_to_read(args.shards)
    out = (args.out or default_report_dir(shards)).rstrip("/")
    written = [Write(f"{out}/{name}", "the report") for name in (REPORT_NAME, DUPLICATES_NAME)]
    for write in written:
        try:
            storage.check_url(write.url, writing=True)
        except UsageError as exc:
            raise UsageError(f"{exc}: give --out, a folder this run may write") from None
    refuse_aliases(shards, written)
    rely_on_own_pixel_limit()  # headers of any size are read, never decoded
    duplicates = SortedSpool()
    try:
        threads = io_threads(args.threads)
        stats, tables, problems = report_batch(
            shards, out, 0, options, duplicates, threads=threads, bar=show_bar(args)
        )
        said = write_dataset_report(out, stats, duplicates.sorted_lines(), tables, options)
    except OSError as exc:
        raise ShardflowError(f"cannot write the report: {exc}") from None
    finally:
        duplicates.close()
    if args.json:
        document = json.loads(storage.read_bytes(f"{out}/{REPORT_NAME}", options) or b"{}")
        document["problems"] = [{"shard": redact_url(s), "problem": p} for s, p in problems]
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
    for shard, problem in problems:
        print(f"shardflow report: {redact_url(shard)}: {problem}", file=sys.stderr)
    if not (args.json or args.quiet):
        for text in said:
            print(text)
    return EXIT_FAILED if problems else EXIT_OK


def default_report_dir(shards: list[str]) -> str:
    """The folder of the first shard (the dataset report's place unless told)."""
    return shards[0].rpartition("/")[0] or "."


def report_batch(
    shards: list[str],
    directory: str,
    task: int,
    options: storage.StorageOptions,
    duplicates: SortedSpool,
    *,
    threads: int,
    bar: bool,
) -> tuple[Stats, list[str], list[tuple[str, str]]]:
    """Stream each shard once: the batch's stats, its per-sample table written in DIRECTORY
    as part TASK (the files written) and the (shard, problem) of those that could not be read
    whole; its image-hash lines go to `duplicates`. `shardflow report` is one batch of every
    shard; `shardflow index --dataset-report` one per pod of its fan-out."""
    stats = Stats()
    problems: list[tuple[str, str]] = []
    with RowStaging() as staging:
        for position, shard_stats, problem in _read_all(shards, options, threads, bar, staging):
            stats.merge(shard_stats)
            if problem:
                problems.append((shards[position], problem))
        tables = write_table(staging, directory, task, options)
        for line in duplicate_lines(staging):
            duplicates.add(line)
    return stats, tables, problems


def _read_all(
    shards: list[str],
    options: storage.StorageOptions,
    threads: int,
    bar: bool,
    staging: RowStaging,
):
    """(position, stats, problem or None) per shard as each finishes; rows go to `staging`."""

    def read(position: int) -> tuple[Stats, RowSink, str | None]:
        url = shards[position]
        stats, sink = Stats(), RowSink()
        try:
            manifest = read_manifest(manifest_url(url), options)
            if manifest is not None:
                stats.add_manifest(manifest)
        except ManifestError:
            pass  # a damaged manifest: counts from the shard alone
        except Exception:  # a back-end that cannot look (http without listing): no manifest
            pass
        try:
            with storage.open_input(url, options) as stream:
                listing = list_archive(stream, rows=RowBuilder(url, sink, stats))
        except ShardError as exc:
            return stats, sink, f"cannot read the shard: {exc.cause}"
        except OSError as exc:
            return stats, sink, f"cannot read the shard: {exc}"
        return stats, sink, str(listing.damage) if listing.damage else None

    progress = Progress(len(shards), bar=bar, desc="report")
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="report") as pool:
            futures = {pool.submit(read, i): i for i in range(len(shards))}
            for future in as_completed(futures):
                position = futures[future]
                stats, sink, problem = future.result()
                staging.add(position, sink)
                progress.advance(0, stats.samples)
                progress.shard_finished()
                yield position, stats, problem
    finally:
        progress.close()
