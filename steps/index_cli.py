"""`shardflow index SHARDS`: write the dataset index (wids JSON, sizes.json, DALI .idx) for
shards that exist, ours or anyone's."""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import storage
from .cli_common import (
    add_output_arguments,
    add_storage_arguments,
    positive_int,
    show_bar,
    storage_options,
)
from .cpus import available_cpus
from .errors import EXIT_FAILED, EXIT_OK, ShardError, ShardflowError
from .manifest import ManifestError, manifest_url, read_manifest
from .progress import ARGO_PROGRESS_FILE, Progress
from .shard_index import (
    ShardIndex,
    default_index_url,
    index_from_manifest,
    index_from_stream,
    write_dataset_index,
)
from .storage_faults import describe
from .verify import manifest_view

DESCRIPTION = """\
Index shards: count each shard's samples and locate every member's data, then write
  PREFIX.shardindex.json   the wids-shard-index-v1 JSON (webdataset's wids.ShardListDataset)
  sizes.json               {file name: samples} per directory (open_clip, DataComp)
  SHARD.idx                with --dali: DALI's wds2idx index (v1.2), one per shard
A shard with a shardflow manifest of the same size is indexed from the manifest without being
read; any other shard from its headers only, seeking over member data (ranged reads on
object stores), several shards at once. A damaged shard is reported and nothing is written.

exit status: 0 index written, 1 a shard could not be indexed (nothing written), 2 usage
error."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="write sample counts and offsets (wids JSON, sizes.json, DALI .idx)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shards", metavar="SHARDS", help="shard URL or brace pattern")
    parser.add_argument(
        "--index",
        metavar="URL",
        help="where to write the wids index (default: PREFIX.shardindex.json beside the first "
        "shard, PREFIX being the shard names' common start)",
    )
    parser.add_argument("--dali", action="store_true", help="also write DALI .idx files")
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="shards indexed at once (default: twice the CPUs this process may use, at most 16)",
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
    shards = storage.expand(args.shards)
    for url in shards:
        storage.check_url(url, writing=False)
    index_url = args.index or default_index_url(shards)
    storage.check_url(index_url, writing=True)
    threads = args.threads or min(16, 2 * available_cpus())
    indexes, errors = index_all(shards, options, threads, args)
    if errors:
        for error in errors:
            print(f"shardflow index: error: {error}", file=sys.stderr)
        print(
            f"shardflow index: {len(errors)} of {len(shards)} shards could not be indexed; "
            "no index written",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        written = write_dataset_index(indexes, index_url, options, dali=args.dali)
    except ShardError as exc:
        print(f"shardflow index: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        raise ShardflowError(f"cannot write the index: {exc}") from None
    _report(indexes, written, args)
    return EXIT_OK


def index_all(
    shards: list[str], options: storage.StorageOptions, threads: int, args: argparse.Namespace
) -> tuple[list[ShardIndex], list[str]]:
    """Every shard indexed by a pool of threads (the work is waiting for storage); the
    indexes in SHARDS order and the errors."""
    progress = Progress(
        len(shards),
        bar=show_bar(args),
        argo_file=os.environ.get(ARGO_PROGRESS_FILE) or None,
        desc="index",
    )
    results: list[ShardIndex | str] = []
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
        [r for r in results if isinstance(r, str)],
    )


def _index_or_error(
    url: str, options: storage.StorageOptions, args: argparse.Namespace
) -> ShardIndex | str:
    try:
        return index_shard(url, options, use_manifest=not args.headers_only)
    except ShardError as exc:
        return str(exc)
    except Exception as exc:  # any back-end's error: a line for this shard, not a crash
        return f"{url}: {describe(exc)}"


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
