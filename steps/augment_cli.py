"""`shardflow augment INPUT OUTPUT`: the command every pod and local worker runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from . import storage
from .augment import AugmentOptions, ShardResult, batch_exit_code
from .augment_batch import augment_all
from .cli_common import (
    add_batch_arguments,
    add_command,
    add_output_arguments,
    add_storage_arguments,
    positive_int,
    show_bar,
    storage_options,
)
from .cpus import available_cpus, threads_for_memory
from .errors import EXIT_DATA, EXIT_FAILED, EXIT_OK, ShardError, UsageError
from .failures import (
    DEFAULT_ON_ERROR,
    ON_ERROR_CHOICES,
    ON_ERROR_HELP,
    add_max_failed_argument,
    too_many_failed,
)
from .images import rely_on_own_pixel_limit
from .pairing import Batch, check_urls, pair_shards
from .pipeline import Pipeline
from .plugins import ENVIRONMENT_VARIABLE as PLUGINS_VARIABLE
from .plugins import allowed_modules
from .progress import ARGO_PROGRESS_FILE, Progress
from .recipe import DEFAULT_RECIPE, RECIPE_HELP, load_recipe
from .redact import redact_url
from .shard_index import index_outputs

DESCRIPTION = """\
Augment WebDataset shards: read each INPUT shard, apply the recipe to every sample, and
publish OUTPUT atomically with a manifest beside it (out-000001.tar ->
out-000001.manifest.json). INPUT and OUTPUT are URLs or brace patterns
('gs://bucket/train-{000000..000554}.tar') that expand to the same number of shards; an
OUTPUT ending in / is a directory that receives shards of the same names.

exit status: 0 all shards written or skipped; 1 a shard failed for a reason a retry may fix
(storage, network); 2 usage error (nothing was done); 3 every failed shard is damaged or
the recipe cannot apply to it (a retry fails the same way), or more samples failed than
--max-failed allows. The other shards still ran."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "augment", DESCRIPTION, "augment shards (the step every task runs)"
    )
    parser.add_argument("input", metavar="INPUT", help="input shard URL or brace pattern")
    parser.add_argument("output", metavar="OUTPUT", help="output shard URL, pattern, or dir/")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        metavar="RECIPE",
        help=f"{RECIPE_HELP} (default: {DEFAULT_RECIPE})",
    )
    recipe.add_argument(
        "--label-field", metavar="PATH", help="JSON path of the class label in label steps"
    )
    recipe.add_argument(
        "--plugins",
        metavar="MODULES",
        help="comma-separated modules whose functions the recipe may call (also "
        f"${PLUGINS_VARIABLE}); plugins are refused otherwise",
    )
    behaviour = parser.add_argument_group("behaviour")
    behaviour.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default=DEFAULT_ON_ERROR,
        help=f"{ON_ERROR_HELP} (default: {DEFAULT_ON_ERROR})",
    )
    add_max_failed_argument(behaviour)
    behaviour.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a shard whose manifest records the same input, recipe and options, beside a "
        "shard of the size it records",
    )
    behaviour.add_argument(
        "--verify-existing",
        action="store_true",
        help="with --skip-existing, also read such a shard and check it as verify does (sha256, "
        "members, counts) before skipping it",
    )
    behaviour.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="parallel workers per shard (default: the CPUs this process may use, fewer when "
        "the cgroup memory limit cannot hold that many images at --max-mpx)",
    )
    behaviour.add_argument(
        "--parallel",
        choices=("processes", "threads"),
        default="processes",
        help="what the workers are: forked processes (default; Linux, otherwise threads), which "
        "use every core, or threads in one process, which share Python's GIL; the output is "
        "the same bytes either way",
    )
    behaviour.add_argument(
        "--max-mpx",
        type=float,
        metavar="MPX",
        default=64.0,
        help="largest image accepted, in megapixels, checked before decoding (default: 64)",
    )
    behaviour.add_argument(
        "--max-member-mb",
        type=float,
        metavar="MB",
        default=64.0,
        help="largest member read into memory, in MB (default: 64)",
    )
    behaviour.add_argument(
        "--allow-pipe",
        action="store_true",
        help="allow pipe:COMMAND inputs (they run a shell command; off by default)",
    )
    batch = parser.add_argument_group("batches (one Argo task = one batch)")
    add_batch_arguments(batch, what="augment")
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    pairs = pair_shards(args.input, args.output)
    check_urls(pairs, allow_pipe=args.allow_pipe)
    if args.task_index is not None:
        pairs = Batch(args.task_index, args.shards_per_task).of(pairs)
    for option, value in (("--max-mpx", args.max_mpx), ("--max-member-mb", args.max_member_mb)):
        if not (math.isfinite(value) and value > 0):  # nan and inf are floats too
            raise UsageError(f"{option} must be a positive number, got {value}")
    if args.verify_existing and not args.skip_existing:
        raise UsageError("--verify-existing only applies with --skip-existing")
    recipe = load_recipe(args.recipe, label_field=args.label_field, storage_options=options)
    rely_on_own_pixel_limit()
    max_pixels = int(args.max_mpx * 1_000_000)
    pipeline = Pipeline(
        recipe,
        max_pixels=max_pixels,
        allowed_plugins=allowed_modules(args.plugins),
    )
    augment_options = AugmentOptions(
        storage_options=options,
        on_error=args.on_error,
        skip_existing=args.skip_existing,
        verify_existing=args.verify_existing,
        threads=args.threads
        or threads_for_memory(
            available_cpus(), max_pixels, processes=args.parallel == "processes"
        ),
        processes=args.parallel == "processes",
        max_member_bytes=int(args.max_member_mb * 1_000_000),
        allow_pipe=args.allow_pipe,
    )
    progress = Progress(
        len(pairs), bar=show_bar(args), argo_file=os.environ.get(ARGO_PROGRESS_FILE) or None
    )
    started = time.monotonic()
    results: list[ShardResult] = []
    try:
        for result in augment_all(pairs, pipeline, augment_options, progress):
            results.append(result)
            _report_shard(result, args, progress)
    finally:
        progress.close()
    failed = any(r.status == "failed" for r in results)
    index = _write_index(pairs, options) if args.task_index is None and not failed else []
    seconds = time.monotonic() - started
    _report_summary(results, recipe.name, pipeline.recipe_hash, seconds, args, index)
    code = batch_exit_code(results)
    finished = [r.counts for r in results if r.status != "failed"]  # skipped ones count too
    read, failed_samples = (sum(c.get(n, 0) for c in finished) for n in ("read", "failed"))
    problem = too_many_failed(read, failed_samples, args.max_failed)
    if problem is not None:
        print(f"shardflow: error: {problem}", file=sys.stderr, flush=True)
        code = EXIT_DATA if code == EXIT_OK else code
    return EXIT_FAILED if code == EXIT_OK and index is None else code


def _write_index(pairs: list[tuple[str, str]], options: storage.StorageOptions) -> list[str] | None:
    """A whole run ends with the dataset index beside the outputs, from their manifests (a
    batch of an Argo run does not: the verify step writes it once every batch is done).
    None when it cannot be written; the shards themselves are complete all the same."""
    try:
        return index_outputs([output for _, output in pairs], options)
    except (ShardError, OSError) as exc:
        print(f"shardflow: error: cannot write the dataset index: {exc}", file=sys.stderr)
        return None


def _report_shard(result: ShardResult, args: argparse.Namespace, progress: Progress) -> None:
    if result.status == "failed":
        progress.write_line(f"shardflow: error: {result.error}", sys.stderr)
        return
    if args.quiet or args.json:
        return
    counts = result.counts
    output = redact_url(result.output)
    if result.status == "skipped":
        written = counts.get("written", 0)
        line = f"{output}: skipped, complete from an earlier run ({written} samples)"
    else:
        rate = counts["read"] / result.seconds if result.seconds else 0.0
        line = (
            f"{output}: {counts['written']} written, {counts['dropped']} dropped, "
            f"{counts['failed']} failed of {counts['read']} read "
            f"({_megabytes(result.output_size)}, {result.seconds:.1f} s, {rate:.1f} samples/s)"
        )
    progress.write_line(line, sys.stdout)


def _report_summary(
    results: list[ShardResult],
    recipe: str,
    recipe_hash: str,
    seconds: float,
    args: argparse.Namespace,
    index: list[str] | None,
) -> None:
    totals = {"read": 0, "written": 0, "dropped": 0, "failed": 0}
    for result in results:
        for name in totals:
            totals[name] += result.counts.get(name, 0) if result.status == "written" else 0
    status = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "failed")}
    if args.json:
        document = {
            "recipe": recipe,
            "recipe_hash": recipe_hash,
            "shards": [r.to_dict() for r in results],
            "summary": {"shards": status, "samples": totals, "seconds": round(seconds, 3)},
            "index": index or [],
        }
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if args.quiet:
        return
    for url in index or []:
        print(f"index: {url}")
    print(
        f"{len(results)} shard(s) with recipe {recipe}: {status['written']} written, "
        f"{status['skipped']} skipped, {status['failed']} failed; samples: "
        f"{totals['written']} written, {totals['dropped']} dropped, {totals['failed']} failed "
        f"of {totals['read']} read in {seconds:.1f} s",
        flush=True,
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
