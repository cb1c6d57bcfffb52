"""`shardflow index SHARDS`: write the dataset index (wids JSON, sizes.json, DALI .idx) for
shards that exist, ours or anyone's."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import storage
from .cli_common import (
    add_batch_arguments,
    add_command,
    add_io_threads_argument,
    add_output_arguments,
    add_storage_arguments,
    show_bar,
    storage_options,
)
from .cpus import io_threads
from .errors import EXIT_DATA, EXIT_FAILED, EXIT_OK, ShardError, ShardflowError, UsageError
from .images import rely_on_own_pixel_limit
from .index_parts import read_parts, remove_parts, write_part
from .manifest import ManifestError, manifest_url, read_manifest
from .pairing import Batch, index_writes, refuse_aliases, shards_to_read, task_count
from .progress import ARGO_PROGRESS_FILE, Progress
from .redact import redact_url
from .report_cli import default_report_dir, report_batch
from .shard_index import (
    ShardIndex,
    default_index_url,
    index_from_manifest,
    index_from_stream,
    write_counts,
    write_dali_indexes,
)
from .spool_sort import SortedSpool
from .storage_faults import describe
from .verify import manifest_view
from .verify_batch import Part, read_part, remove_part, write_merged_report
from .verify_batch import write_part as write_report_part
from .verify_files import dataset_report_writes

DESCRIPTION = """\
Index shards: count each shard's samples and locate every member's data, then write
  PREFIX.shardindex.json   the wids-shard-index-v1 JSON (webdataset's wids.ShardListDataset)
  sizes.json               {file name: samples} per directory (open_clip, DataComp)
  SHARD.idx                with --dali: DALI's wds2idx index (v1.2), one per shard
A shard with a shardflow manifest of the same size is indexed from the manifest without being
read; any other shard from its headers only, seeking over member data (ranged reads on
object stores), several shards at once. A damaged shard is reported and nothing is written.

With --dataset-report DIR, every shard is also streamed in full and the dataset report
written in DIR, as `shardflow report --out DIR` writes it (per-sample table, counts, plots,
duplicate images).

On Argo, the WorkflowTemplate shardflow-index fans this out: --task-index I --parts URL per
batch (with a dataset report, the batch's table and a part in PARTS/report/), then --merge
--parts URL.

exit status: 0 index written; nothing is written otherwise: 1 a shard could not be read
(storage, network: a retry may pass), 2 usage error, 3 every failed shard is damaged or
cannot be described (DALI's format: no samples, white space in a name)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "index",
        DESCRIPTION,
        "write sample counts and offsets (wids JSON, sizes.json, DALI .idx)",
    )
    parser.add_argument("shards", metavar="SHARDS", help="shard URL or brace pattern")
    parser.add_argument(
        "--index",
        metavar="URL",
        help="where to write the wids index (default: PREFIX.shardindex.json beside the first "
        "shard, PREFIX being the shard names' common start)",
    )
    parser.add_argument(
        "--dali",
        nargs="?",
        const="yes",
        default="no",
        choices=("yes", "no"),
        help="also write DALI .idx files (--dali, or --dali=yes|no as a workflow passes it)",
    )
    add_io_threads_argument(parser, doing="shards indexed at once")
    batch = parser.add_argument_group(
        "batches (the shardflow-index fan-out: each task writes a part, the last step merges)"
    )
    batch.add_argument(
        "--parts",
        metavar="URL",
        help="directory of the batches' parts; with --task-index: index only batch I and write "
        "its part (and its .idx files); with --merge: write the index from every part",
    )
    add_batch_arguments(batch, what="index")
    batch.add_argument("--merge", action="store_true", help="merge the parts into the index")
    batch.add_argument(
        "--write-plan",
        metavar="DIR",
        help="only write DIR/tasks (the number of batches), DIR/parts (the parts URL: "
        "--parts, or .INDEX.parts/ beside the index) and DIR/report-dir (with --report=yes, "
        "the folder of the first shard; else empty), the fan-out's first step",
    )
    batch.add_argument(
        "--report",
        choices=("yes", "no"),
        default="no",
        help="with --write-plan: whether the fan-out writes the dataset report (default: no)",
    )
    parser.add_argument(
        "--dataset-report",
        metavar="DIR",
        help="also stream every shard in full and write the dataset report in DIR, as "
        "`shardflow report --out DIR` does (empty: none)",
    )
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="read every shard's headers, even when a manifest describes it",
    )
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    shards = shards_to_read(args.shards)
    index_url = args.index or default_index_url(shards)
    storage.check_url(index_url, writing=True)
    report_dir = (args.dataset_report or "").rstrip("/") or None
    if args.write_plan and args.report == "yes":
        report_dir = default_report_dir(shards)  # as `shardflow report`
    elif args.report == "yes":
        raise UsageError("--report=yes goes with --write-plan; else give --dataset-report DIR")
    report_writes = dataset_report_writes(report_dir) if report_dir is not None else []
    for write in report_writes:
        storage.check_url(write.url, writing=True)
    writes = [*index_writes(shards, index_url), *report_writes]
    refuse_aliases([*shards, *map(manifest_url, shards)], writes)
    if report_dir is not None:
        rely_on_own_pixel_limit()  # headers of any size are read, never decoded
    if args.write_plan:
        return _write_plan(args, shards, index_url, report_dir)
    if (args.task_index is not None or args.merge) != bool(args.parts):
        raise UsageError("--parts goes with --task-index (one batch) or --merge (all parts)")
    if args.task_index is not None and args.merge:
        raise UsageError("--task-index and --merge are two steps: give one of them")
    try:
        if args.merge:
            indexes = read_parts(args.parts, shards, args.shards_per_task, options)
            reports = _read_report_parts(args, shards, options) if report_dir else []
            written = write_counts(indexes, index_url, options)
            if report_dir is not None:
                written += write_merged_report(report_dir, reports, options)
                for part in reports:
                    remove_part(report_parts(args.parts), part.task, options)
                storage.remove_empty_folder(report_parts(args.parts))
            remove_parts(args.parts, len(shards), args.shards_per_task, options)
            storage.remove_empty_folder(args.parts)
        else:
            batch = (
                Batch(args.task_index, args.shards_per_task).of(shards)
                if args.task_index is not None
                else shards
            )
            threads = io_threads(args.threads)
            indexes, status = _index_or_report(batch, options, threads, args)
            if status == EXIT_OK and report_dir is not None:
                reported, status = _dataset_report(args, batch, report_dir, options, threads)
            if status != EXIT_OK:
                return status
            written = write_dali_indexes(indexes, index_url, options) if args.dali == "yes" else []
            if args.task_index is None:
                written += write_counts(indexes, index_url, options)
            else:
                written.append(write_part(args.parts, args.task_index, indexes, options))
            if report_dir is not None:
                written += reported
    except ShardError as exc:
        print(f"shardflow index: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        raise ShardflowError(f"cannot write the index: {exc}") from None
    _report(indexes, written, args)
    return EXIT_OK


def report_parts(parts: str) -> str:
    """Where the batches' dataset report parts go (verify's part format, verify_batch.py)."""
    return f"{parts.rstrip('/')}/report"


def _dataset_report(
    args: argparse.Namespace,
    batch: list[str],
    directory: str,
    options: storage.StorageOptions,
    threads: int,
) -> tuple[list[str], int]:
    """Stream the batch in full for the dataset report (report_cli.report_batch): in one
    process, the report itself; in a pod (--task-index), its table and its part, merged by
    --merge. (What was written, EXIT_OK), or EXIT_FAILED after a line per shard that could
    not be read whole."""
    task = args.task_index or 0
    duplicates = SortedSpool()
    try:
        started = time.monotonic()
        stats, tables, problems = report_batch(
            batch, directory, task, options, duplicates, threads=threads, bar=show_bar(args)
        )
        for shard, problem in problems:
            print(f"shardflow index: error: {redact_url(shard)}: {problem}", file=sys.stderr)
        if problems:
            return [], EXIT_FAILED
        part = Part(task, batch, [], [], stats, time.monotonic() - started, tables=tables)
        if args.task_index is not None:
            return [write_report_part(report_parts(args.parts), part, duplicates, options)], EXIT_OK
        part.duplicates = duplicates.opener()
        return write_merged_report(directory, [part], options), EXIT_OK
    finally:
        duplicates.close()


def _read_report_parts(
    args: argparse.Namespace, shards: list[str], options: storage.StorageOptions
) -> list[Part]:
    """Every batch's dataset report part, checked against the batch it must describe."""
    return [
        read_part(
            report_parts(args.parts), task, Batch(task, args.shards_per_task).of(shards), options
        )
        for task in range(task_count(len(shards), args.shards_per_task))
    ]


def _write_plan(
    args: argparse.Namespace, shards: list[str], index_url: str, report_dir: str | None
) -> int:
    """The fan-out's plan: how many batches, where their parts go and the dataset report's
    folder (local files: Argo reads output parameters from the pod's file system)."""
    tasks = task_count(len(shards), args.shards_per_task)
    directory, _, name = index_url.rpartition("/")
    parts = args.parts or (f"{directory}/" if directory else "") + f".{name}.parts/"
    storage.check_url(parts, writing=True)
    plan_directory = Path(args.write_plan)
    plan_directory.mkdir(parents=True, exist_ok=True)
    (plan_directory / "tasks").write_text(str(tasks))
    (plan_directory / "parts").write_text(parts)
    (plan_directory / "report-dir").write_text(report_dir or "")
    if not (args.quiet or args.json):
        print(f"index plan: {len(shards)} shards in {tasks} batches; parts in {parts}")
    return EXIT_OK


def _index_or_report(
    shards: list[str], options: storage.StorageOptions, threads: int, args: argparse.Namespace
) -> tuple[list[ShardIndex], int]:
    """The shards' indexes and EXIT_OK, or a line per shard that could not be indexed and
    the exit status: 3 when every failure is the data's (a retry fails the same way), else 1."""
    indexes, errors = index_all(shards, options, threads, args)
    for message, _ in errors:
        print(f"shardflow index: error: {message}", file=sys.stderr)
    if not errors:
        return indexes, EXIT_OK
    print(
        f"shardflow index: {len(errors)} of {len(shards)} shards could not be indexed; "
        "nothing written",
        file=sys.stderr,
    )
    return indexes, EXIT_DATA if {code for _, code in errors} == {EXIT_DATA} else EXIT_FAILED


def index_all(
    shards: list[str], options: storage.StorageOptions, threads: int, args: argparse.Namespace
) -> tuple[list[ShardIndex], list[tuple[str, int]]]:
    """Every shard indexed by a pool of threads (the work is waiting for storage); the
    indexes in SHARDS order and the errors with their exit status."""
    progress = Progress(
        len(shards),
        bar=show_bar(args),
        argo_file=os.environ.get(ARGO_PROGRESS_FILE) or None,
        desc="index",
    )
    results: list[ShardIndex | tuple[str, int]] = []
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="index") as pool:
            for result in pool.map(lambda url: _index_or_error(url, options, args), shards):
                results.append(result)
                progress.advance(0, result.nsamples if isinstance(result, ShardIndex) else 0)
                progress.shard_finished()
    finally:
        progress.close()
    return (
        [r for r in results if isinstance(r, ShardIndex)],
        [r for r in results if not isinstance(r, ShardIndex)],
    )


def _index_or_error(
    url: str, options: storage.StorageOptions, args: argparse.Namespace
) -> ShardIndex | tuple[str, int]:
    try:
        index = index_shard(url, options, use_manifest=not args.headers_only)
        return index if args.dali == "yes" else index.counts_only()
    except ShardError as exc:
        return str(exc), exc.exit_code
    except Exception as exc:  # any back-end's error: a line for this shard, not a crash
        return f"{url}: {describe(exc)}", EXIT_FAILED


def index_shard(
    url: str, options: storage.StorageOptions, *, use_manifest: bool = True
) -> ShardIndex:
    """From the manifest when one describes a shard of this size, else from the headers."""
    size = storage.size(url, options)
    if use_manifest and size is not None:
        manifest = _manifest(url, options)
        if manifest is not None and manifest["output_size"] == size:
            return index_from_manifest(url, manifest)
    if size is None:  # compressed or piped: a stream, read through
        with storage.open_input(url, options) as stream:
            return index_from_stream(url, stream, seek_size=None)
    with storage.open_ranged(url, options) as stream:
        return index_from_stream(url, stream, seek_size=size)


def _manifest(url: str, options: storage.StorageOptions) -> dict[str, Any] | None:
    """The shard's manifest if there is a valid one."""
    try:
        document = read_manifest(manifest_url(url), options)
        if document is not None:
            manifest_view(document)  # untrusted: types checked before use
        return document
    except ManifestError:
        return None


def _report(indexes: list[ShardIndex], written: list[str], args: argparse.Namespace) -> None:
    total = sum(shard.nsamples for shard in indexes)
    from_manifests = sum(shard.source == "manifest" for shard in indexes)
    if args.json:
        document = {
            "samples": total,
            "shards": [
                {"url": s.url, "nsamples": s.nsamples, "filesize": s.filesize, "from": s.source}
                for s in indexes
            ],
            "written": written,
        }
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if args.quiet:
        return
    for url in written:
        print(f"wrote {url}")
    print(
        f"index: {total} samples in {len(indexes)} shards ({from_manifests} from manifests, "
        f"{len(indexes) - from_manifests} from headers)"
    )
