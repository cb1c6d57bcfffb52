"""`shardflow augment INPUT OUTPUT`: the command every pod and local worker runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from . import storage
from .augment import AugmentOptions, ShardResult, augment_all, batch_exit_code, plan_shards
from .cli_common import (
    add_output_arguments,
    add_storage_arguments,
    non_negative_int,
    positive_int,
    show_bar,
    storage_options,
)
from .cpus import available_cpus, threads_for_memory
from .errors import UsageError
from .images import rely_on_own_pixel_limit
from .pipeline import Pipeline
from .plugins import allowed_modules
from .progress import ARGO_PROGRESS_FILE, Progress
from .recipe import BUILTIN_RECIPES, load_recipe

DESCRIPTION = """\
Augment WebDataset shards: read each INPUT shard, apply the recipe to every sample, and
publish OUTPUT atomically with a manifest beside it (out-000001.tar ->
out-000001.manifest.json). INPUT and OUTPUT are URLs or brace patterns
('gs://bucket/train-{000000..000554}.tar') that expand to the same number of shards; an
OUTPUT ending in / is a directory that receives shards of the same names.

exit status: 0 all shards written or skipped; 1 a shard failed for a reason a retry may fix
(storage, network); 2 usage error (nothing was done); 3 every failed shard is damaged or
the recipe cannot apply to it (a retry fails the same way). The other shards still ran."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "augment",
        help="augment shards (the step every task runs)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", help="input shard URL or brace pattern")
    parser.add_argument("output", metavar="OUTPUT", help="output shard URL, pattern, or dir/")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--recipe",
        default="seed",
        metavar="RECIPE",
        help=f"built-in name ({', '.join(BUILTIN_RECIPES)}), a .yaml/.json file or URL, or "
        "inline JSON (default: seed)",
    )
    recipe.add_argument(
        "--label-field", metavar="PATH", help="JSON path of the class label in label steps"
    )
    recipe.add_argument(
        "--plugins",
        metavar="MODULES",
        help="comma-separated modules whose functions the recipe may call (also "
        "$SHARDFLOW_PLUGINS); plugins are refused otherwise",
    )
    behaviour = parser.add_argument_group("behaviour")
    behaviour.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="a sample that cannot be decoded or processed: skip it (counted and listed in the "
        "manifest) or fail its shard (default: skip)",
    )
    behaviour.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a shard whose manifest records the same input and recipe hash",
    )
    behaviour.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="worker threads per shard (default: the CPUs this process may use, fewer when "
        "the cgroup memory limit cannot hold that many images at --max-mpx)",
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
    batch.add_argument(
        "--task-index",
        type=non_negative_int,
        metavar="I",
        help="process only batch number I (0-based)",
    )
    batch.add_argument(
        "--shards-per-task",
        type=positive_int,
        metavar="N",
        default=1,
        help="shards per batch, with --task-index (default: 1)",
    )
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    pairs = _select_batch(_pairs(args.input, args.output, args.allow_pipe), args)
    for option, value in (("--max-mpx", args.max_mpx), ("--max-member-mb", args.max_member_mb)):
        if not (math.isfinite(value) and value > 0):  # nan and inf are floats too
            raise UsageError(f"{option} must be a positive number, got {value}")
    recipe = load_recipe(args.recipe, label_field=args.label_field)
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
        threads=args.threads or threads_for_memory(available_cpus(), max_pixels),
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
    _report_summary(results, recipe.name, pipeline.recipe_hash, time.monotonic() - started, args)
    return batch_exit_code(results)


def _pairs(input_pattern: str, output_pattern: str, allow_pipe: bool) -> list[tuple[str, str]]:
    inputs = storage.expand(input_pattern)
    outputs: list[str] | str = (
        output_pattern if output_pattern.endswith("/") else storage.expand(output_pattern)
    )
    pairs = plan_shards(inputs, outputs)
    for input_url, output_url in pairs:
        storage.check_url(input_url, writing=False, allow_pipe=allow_pipe)
        storage.check_url(output_url, writing=True)
        if input_url == output_url:
            raise UsageError(f"{input_url!r} is both an input and an output")
    return pairs


def _select_batch(pairs: list[tuple[str, str]], args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.task_index is None:
        return pairs
    per_task = args.shards_per_task
    batches = -(-len(pairs) // per_task)
    if args.task_index >= batches:
        raise UsageError(
            f"--task-index {args.task_index} is out of range: {len(pairs)} shards in batches of "
            f"{per_task} make {batches} tasks (0..{batches - 1})"
        )
    start = args.task_index * per_task
    return pairs[start : start + per_task]


def _report_shard(result: ShardResult, args: argparse.Namespace, progress: Progress) -> None:
    if result.status == "failed":
        progress.write_line(f"shardflow: error: {result.error}", sys.stderr)
        return
    if args.quiet or args.json:
        return
    counts = result.counts
    if result.status == "skipped":
        written = counts.get("written", 0)
        line = f"{result.output}: skipped, complete from an earlier run ({written} samples)"
    else:
        rate = counts["read"] / result.seconds if result.seconds else 0.0
        line = (
            f"{result.output}: {counts['written']} written, {counts['dropped']} dropped, "
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
        }
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if args.quiet:
        return
    print(
        f"{len(results)} shard(s) with recipe {recipe}: {status['written']} written, "
        f"{status['skipped']} skipped, {status['failed']} failed; samples: "
        f"{totals['written']} written, {totals['dropped']} dropped, {totals['failed']} failed "
        f"of {totals['read']} read in {seconds:.1f} s",
        flush=True,
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
