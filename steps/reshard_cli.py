"""`shardflow reshard INPUTS OUTPUTS`: N shards in, M shards out (split, merge, filter by a
key list, shuffle), each output written by an independent task."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from . import storage
from .augment import ShardResult, exit_code_for
from .cli_common import (
    add_command,
    add_output_arguments,
    add_storage_arguments,
    auto_or_positive_int,
    non_negative_int,
    positive_int,
    storage_options,
)
from .cpus import available_cpus
from .errors import EXIT_DATA, EXIT_FAILED, EXIT_OK, EXIT_USAGE, ShardError, UsageError
from .failures import add_max_failed_argument, too_many_failed
from .images import rely_on_own_pixel_limit
from .key_lists import load_keys
from .output_names import MOST_LEFT_OVER, OutputNames
from .pairing import (
    AUTO,
    RESHARD_COUNT,
    RESHARD_WRITE,
    Batch,
    Write,
    check_urls,
    refuse_aliases,
    task_count,
)
from .parallel import ordered_map, processes_available
from .pipeline import Pipeline
from .plugins import allowed_modules
from .ranged_read import serves_ranges
from .recipe import BUILTIN_RECIPES, load_recipe
from .redact import redact_url
from .reshard_inventory import count_batch, read_inventory
from .reshard_plan import KeyFilter, PlanSettings, Sizing, make_plan, read_summary
from .reshard_write import WriteOptions, refuse_message, write_output
from .shard_index import index_outputs
from .verify_files import VerifyFiles, verify_batch_size
from .worker_processes import map_in_processes

STEPS = ("all", "count", "plan", "write")
T = TypeVar("T")
WORK_NAME = ".reshard"
VERIFY_PARTS_NAME = "verify-parts"  # in WORK: the verify batches' parts, merged, then removed
OUTPUTS_AT_ONCE = 3
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?")

DESCRIPTION = """\
Reshard WebDataset shards: read the samples of INPUTS and write them into new shards OUTPUTS,
split (one big shard into many), merged (many into few), filtered by a key list, and/or
shuffled across all inputs; every output with a manifest naming, per sample, the input shard
and key it came from.

OUTPUTS is a brace pattern with enough names (without a size option: as many shards as it
names) or a printf pattern (out/train-%06d.tar: as many as needed).

Steps (all by default; one at a time on Argo, WorkflowTemplate shardflow-reshard):
  count  each input's samples (from its manifest, else its tar headers only)
  plan   which samples each output holds: WORK/plan.jsonl, one line per output
  write  each output from its plan line: byte ranges fetched, written, published atomically

exit status: 0 done; 1 an input or output could not be read or written (a retry may pass);
2 usage error (nothing written; also too few OUTPUTS names, said before writing); 3 damaged
data (a shard that cannot be counted, a duplicate key without --rename-duplicates)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "reshard",
        DESCRIPTION,
        "split, merge, filter and shuffle shards into new shards",
    )
    parser.add_argument("inputs", metavar="INPUTS", help="input shard URL or brace pattern")
    parser.add_argument(
        "outputs", metavar="OUTPUTS", help="output brace pattern or printf pattern (%%06d)"
    )
    sizing = parser.add_argument_group("sizing (one of)").add_mutually_exclusive_group()
    sizing.add_argument(
        "--samples-per-shard",
        type=_unset_or(positive_int),
        metavar="N",
        help="N samples per output",
    )
    sizing.add_argument(
        "--shards",
        type=_unset_or(positive_int),
        metavar="M",
        help="M outputs whose sample counts differ by at most one",
    )
    sizing.add_argument(
        "--max-shard-bytes",
        type=_unset_or(parse_size),
        metavar="SIZE",
        help="outputs of at most SIZE bytes (1GB, 500MiB, 1000000); a larger sample gets an "
        "output of its own",
    )
    keys = parser.add_argument_group("samples kept")
    which = keys.add_mutually_exclusive_group()
    which.add_argument(
        "--keep-keys", type=_unset_or(str), metavar="URL", help="keep only the keys of this list"
    )
    which.add_argument(
        "--drop-keys", type=_unset_or(str), metavar="URL", help="keep every key but those listed"
    )
    keys.add_argument(
        "--keys-column",
        type=_unset_or(str),
        metavar="NAME",
        help="the Parquet column of keys (default: the only one, else key, __key__ or uid)",
    )
    keys.add_argument(
        "--rename-duplicates",
        nargs="?",
        const="yes",
        default="no",
        choices=("yes", "no"),
        help="a key found twice keeps its name the first time; later copies become KEY_dupN "
        "(--rename-duplicates, or =yes|no as a workflow passes it)",
    )
    parser.add_argument(
        "--shuffle",
        type=_unset_or(non_negative_int),
        metavar="SEED",
        help="a uniform permutation of all kept samples, reproducible from SEED",
    )
    recipe = parser.add_argument_group("recipe (default: members copied byte for byte)")
    recipe.add_argument(
        "--recipe",
        type=_unset_or(str),
        metavar="RECIPE",
        help=f"apply a recipe on the way: a built-in name ({', '.join(BUILTIN_RECIPES)}), a "
        ".yaml/.json file or URL, or inline JSON",
    )
    recipe.add_argument("--label-field", metavar="PATH", help="as in augment")
    recipe.add_argument("--plugins", metavar="MODULES", help="as in augment")
    recipe.add_argument("--on-error", choices=("skip", "fail"), default="skip")
    recipe.add_argument("--max-mpx", type=float, default=64.0, metavar="MPX")
    add_max_failed_argument(recipe)
    behaviour = parser.add_argument_group("behaviour")
    behaviour.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip an output whose manifest records the same plan line and recipe",
    )
    behaviour.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="requests in flight per output, inputs counted at once (default: 8)",
    )
    behaviour.add_argument(
        "--work",
        type=_unset_or(str),
        metavar="URL",
        help=f"folder of the inventory and the plan (default: {WORK_NAME}/ beside the outputs)",
    )
    steps = parser.add_argument_group("steps and batches (one Argo task = one batch)")
    steps.add_argument("--step", choices=STEPS, default="all", help="run one step (default: all)")
    steps.add_argument("--task-index", type=non_negative_int, metavar="I", help="batch I only")
    steps.add_argument(
        "--inputs-per-task",
        type=auto_or_positive_int,
        default=AUTO,
        metavar="N",
        help=f"inputs counted per count task, or {RESHARD_COUNT.auto_help()} (the default; with "
        "--step, a number making more is refused)",
    )
    steps.add_argument(
        "--shards-per-task",
        type=auto_or_positive_int,
        default=AUTO,
        metavar="N",
        help=f"outputs written per write task, or {RESHARD_WRITE.auto_help()} (the default; with "
        "--step, a number making more is refused)",
    )
    steps.add_argument(
        "--write-plan",
        metavar="DIR",
        help="with --step count: only write DIR/tasks and DIR/work; with --step plan: also "
        "write, after planning, DIR/tasks (the write batches), DIR/verify-tasks and "
        "DIR/verify-shards-per-task (the verify batches), and where verify writes: "
        "DIR/report, DIR/sample-sheet, DIR/report-dir and DIR/verify-parts",
    )
    add_storage_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def _unset_or(kind: Callable[[str], T]) -> Callable[[str], T | None]:
    """argparse type: `kind`, or None for an empty value (a workflow parameter left empty;
    argparse counts None as not given, also in a mutually exclusive group)."""

    def parse(text: str) -> T | None:
        return None if text == "" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def parse_size(text: str) -> int:
    """argparse type: a byte count with an optional unit (k, M, G, T; KiB... powers of 2)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1GB or 500MiB")
    number, unit, binary = match.groups()
    power = " kmgt".index(unit.lower() or " ")
    value = int(float(number) * (1024 if binary else 1000) ** power)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size")
    return value


def default_work(names: OutputNames) -> str:
    folder = names.pattern.rpartition("/")[0]
    return f"{folder}/{WORK_NAME}" if folder else WORK_NAME


def run(args: argparse.Namespace) -> int:
    options = storage_options(args)
    inputs = storage.expand(args.inputs)
    names = OutputNames(args.outputs)
    work = (args.work or default_work(names)).rstrip("/")
    check_urls([(url, names.url(0)) for url in inputs])
    # Every pod expands INPUTS alike, so each computes the same count batches.
    fanout = args.step != "all"  # the batches are Argo pods: too many are refused
    per_task = RESHARD_COUNT.per_task(args.inputs_per_task, len(inputs), refuse=fanout)
    args.inputs_per_task = per_task
    storage.check_url(f"{work}/plan.json", writing=True)
    if names.count is not None:
        refuse_aliases(inputs, [Write(url, "an output") for url in storage.expand(args.outputs)])
    if args.shuffle is not None and args.step in ("all", "plan"):
        _refuse_unranged(inputs, options)
    if args.step == "count":
        return _count_step(args, inputs, work, options)
    if args.step == "plan":
        summary = _plan(args, inputs, names, work, options)
        if args.write_plan:
            values = plan_parameters(summary["outputs"], args.shards_per_task, inputs, names, work)
            _write_parameters(args.write_plan, values)
        return EXIT_OK
    write_options = _write_options(args, options)
    write_options.inputs = frozenset(inputs)
    write_options.output_url = names.url
    if args.step == "write":
        summary = read_summary(work, options)
        outputs: Sequence[int] = range(summary["outputs"])
        if args.task_index is not None:
            # the number of outputs from the plan: the batches plan_parameters counted
            per_task = RESHARD_WRITE.per_task(args.shards_per_task, len(outputs))
            outputs = Batch(args.task_index, per_task).of(outputs)
        return _write_all(args, work, outputs, write_options)
    started = time.monotonic()
    threads = args.threads or 8
    for task in range(task_count(len(inputs), args.inputs_per_task)):
        count_batch(inputs, task, args.inputs_per_task, work, options, threads=threads)
    summary = _plan(args, inputs, names, work, options)
    code = _write_all(args, work, range(summary["outputs"]), write_options)
    if code == EXIT_OK:  # as augment: a whole run ends with the dataset index, from manifests
        urls = [names.url(index) for index in range(summary["outputs"])]
        try:
            written = index_outputs(urls, options)
        except (ShardError, OSError) as exc:
            print(
                f"shardflow reshard: error: cannot write the dataset index: {exc}", file=sys.stderr
            )
            return EXIT_FAILED
        if not (args.quiet or args.json):
            print("\n".join(f"index: {redact_url(url)}" for url in written), flush=True)
    if not (args.quiet or args.json):
        print(f"reshard: {time.monotonic() - started:.1f} s in all", flush=True)
    return code


def _refuse_unranged(inputs: list[str], options: storage.StorageOptions) -> None:
    """--shuffle reads inputs by ranges: one probe per server (hosts serve alike) and kind
    of compression (a compressed input has no ranges)."""
    probed: set[tuple[str, str | None]] = set()
    for url in inputs:
        where = ("/".join(url.split("/", 3)[:3]), storage.compression_of(url))
        if where in probed:
            continue
        probed.add(where)
        if not serves_ranges(url, options):
            raise UsageError(refuse_message(redact_url(url)))


def _count_step(
    args: argparse.Namespace, inputs: list[str], work: str, options: storage.StorageOptions
) -> int:
    tasks = task_count(len(inputs), args.inputs_per_task)
    if args.write_plan:
        _write_parameters(args.write_plan, {"tasks": str(tasks), "work": work})
        return EXIT_OK
    batches = [args.task_index] if args.task_index is not None else range(tasks)
    for task in batches:
        Batch(task, args.inputs_per_task).of(inputs)  # out of range: a usage error
        url, samples = count_batch(
            inputs, task, args.inputs_per_task, work, options, threads=args.threads or 8
        )
        if not (args.quiet or args.json):
            print(f"counted {samples} samples: {redact_url(url)}", flush=True)
    return EXIT_OK


def _write_parameters(directory: str, values: dict[str, str]) -> None:
    """Argo's output parameters, read from the pod's file system."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(value)


def plan_parameters(
    count: int, shards_per_task: str | int, inputs: list[str], names: OutputNames, work: str
) -> dict[str, str]:
    """What the DAG's write and verify fan-outs need for `count` outputs written
    `shards_per_task` (a number or `auto`, WRITE) to a pod (`--step plan --write-plan`): the
    write batches, the verify batches (sized as the augment DAG's, verify_files.py) and where
    verify writes, beside the outputs (its parts in WORK). Too many write batches, or a verify
    file at a shard's location, are refused here, before any output is written."""
    per_task = RESHARD_WRITE.per_task(shards_per_task, count)
    outputs = [names.url(index) for index in range(count)]
    files = VerifyFiles.beside(outputs, parts=f"{work}/{VERIFY_PARTS_NAME}")
    refuse_aliases([*inputs, *outputs], files.writes())
    verify_per_task = verify_batch_size(count, per_task)
    return {
        "tasks": str(task_count(count, per_task)),
        "verify-tasks": str(task_count(len(outputs), verify_per_task)),
        "verify-shards-per-task": str(verify_per_task),
        **files.parameters(),
    }


def _plan(
    args: argparse.Namespace,
    inputs: list[str],
    names: OutputNames,
    work: str,
    options: storage.StorageOptions,
) -> dict:
    sizing = Sizing(args.samples_per_shard, args.shards, args.max_shard_bytes)
    if sizing == Sizing():
        if names.count is None:
            raise UsageError(
                "a printf OUTPUTS pattern needs --samples-per-shard, --shards or --max-shard-bytes"
            )
        sizing = Sizing(shards=names.count)
    keys_url = args.keep_keys or args.drop_keys
    keys = KeyFilter()
    if keys_url:
        listed = load_keys(keys_url, options, column=args.keys_column)
        keys = KeyFilter(
            listed, keep=bool(args.keep_keys), url=redact_url(keys_url), column=args.keys_column
        )
    settings = PlanSettings(
        sizing,
        keys,
        args.shuffle,
        args.rename_duplicates == "yes",
        input_pattern=args.inputs,
        inputs_per_task=args.inputs_per_task,
    )

    def inventory():
        return read_inventory(work, inputs, args.inputs_per_task, options)

    summary = make_plan(inventory, inputs, names, settings, work, options)
    _report_plan(summary, args)
    _warn_left_over(names, summary["outputs"], options)
    return summary


def _warn_left_over(names: OutputNames, used: int, options: storage.StorageOptions) -> None:
    """Shards an earlier, larger run left after this plan's outputs are not touched (they may
    be someone's data) but named: they are not in this dataset's index."""
    left = names.left_over(used, options)
    if left:
        more = "+" if len(left) == MOST_LEFT_OVER else ""
        print(
            f"shardflow reshard: warning: {len(left)}{more} shards after this plan's {used} "
            f"outputs are left from an earlier run ({redact_url(left[0])} .. "
            f"{redact_url(left[-1])}); they are not part of this dataset nor of its index: "
            "remove them before reading the folder by a glob",
            file=sys.stderr,
            flush=True,
        )


def _report_plan(summary: dict, args: argparse.Namespace) -> None:
    keys = summary["keys"]
    if keys["not_found"]:
        first = ", ".join(repr(k) for k in keys["first_not_found"])
        print(
            f"shardflow reshard: {keys['not_found']} listed keys are in no input (first: {first})",
            file=sys.stderr,
        )
    if args.quiet or args.json:
        return
    extra = f", {summary['oversized']} oversized" if summary["oversized"] else ""
    renamed = f", {summary['renamed']} renamed" if summary["renamed"] else ""
    print(
        f"plan: {summary['samples']} samples from {summary['inputs']} inputs into "
        f"{summary['outputs']} outputs{extra}{renamed}",
        flush=True,
    )


def _write_options(args: argparse.Namespace, options: storage.StorageOptions) -> WriteOptions:
    pipeline = None
    if args.recipe:
        recipe = load_recipe(args.recipe, label_field=args.label_field, storage_options=options)
        rely_on_own_pixel_limit()
        pipeline = Pipeline(
            recipe,
            max_pixels=int(args.max_mpx * 1_000_000),
            allowed_plugins=allowed_modules(args.plugins),
        )
    return WriteOptions(
        storage_options=options,
        threads=args.threads or max(8, available_cpus()),
        skip_existing=args.skip_existing,
        pipeline=pipeline,
        on_error=args.on_error,
        need_ranges=args.shuffle is not None,
    )


def _write_all(
    args: argparse.Namespace, work: str, outputs: Sequence[int], options: WriteOptions
) -> int:
    """Write the outputs, a few at a time (while one waits on storage, a flush or an upload,
    the others write), keeping counts rather than results: a million outputs cost no more
    memory than ten (with --json, one small entry each)."""
    status = {"written": 0, "skipped": 0, "failed": 0}
    samples = {"written": 0, "read": 0, "failed": 0}
    failed_codes: list[int] = []
    entries = []
    requests = 0
    for result in _written(work, outputs, options):
        _report(result, args)
        requests += result.requests
        status[result.status] += 1
        if result.status == "failed":
            failed_codes.append(result.exit_code)
        else:
            for name in samples:
                samples[name] += result.counts.get(name, 0)
        if args.json:
            entries.append(result.to_dict())
    if args.json:
        summary = {**status, "samples": samples["written"], "read_requests": requests}
        json.dump({"shards": entries, "summary": summary}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(
            f"{sum(status.values())} output(s): {status['written']} written, "
            f"{status['skipped']} skipped, {status['failed']} failed; {samples['written']} "
            f"samples, {requests} read requests",
            flush=True,
        )
    code = _exit_code(set(failed_codes))
    problem = too_many_failed(samples["read"], samples["failed"], args.max_failed)
    if problem is not None:  # as augment: a recipe failing too many samples is the data's
        print(f"shardflow reshard: error: {problem}", file=sys.stderr, flush=True)
        code = EXIT_DATA if code == EXIT_OK else code
    return code


def _written(work: str, outputs: Sequence[int], options: WriteOptions) -> Iterator[ShardResult]:
    """Each output's result, in order. Copies are written a few at a time on threads (while
    one waits on storage, a flush or an upload, the others write; hashing and I/O release
    the GIL). With a recipe and several CPUs, each worker process writes whole outputs, one
    at a time, the recipe on one thread: the recipe then has a core to itself instead of
    sharing Python's GIL (as augment's workers do, steps/augment_batch.py)."""
    workers = available_cpus()
    if options.pipeline is None or workers < 2 or not processes_available():
        yield from ordered_map(
            lambda index: write_output(work, index, options), outputs, threads=OUTPUTS_AT_ONCE
        )
        return
    alone = replace(options, recipe_threads=1)
    yield from map_in_processes(  # closing this generator closes that one, stopping workers
        lambda index: write_output(work, index, alone),
        outputs,
        workers,
        2 * workers + 1,
        workers_clean_up=True,
        on_death=lambda index, death: ShardResult.not_finished(
            work, f"output {index} of the plan", death, named=f"output {index} of the plan"
        ),
    )


def _exit_code(codes: set[int]) -> int:
    """augment's rule (0; 137 when a worker was killed; 3 when every failure is the data's;
    else 1), and 2 when every failure is a refusal (a plan of another run, an input without
    ranges for --shuffle)."""
    if codes == {EXIT_USAGE}:
        return EXIT_USAGE
    return exit_code_for(codes)


def _report(result: ShardResult, args: argparse.Namespace) -> None:
    if result.status == "failed":
        print(f"shardflow reshard: error: {result.error}", file=sys.stderr, flush=True)
    elif not (args.quiet or args.json):
        what = "skipped, complete" if result.status == "skipped" else "written"
        print(
            f"{redact_url(result.output)}: {what} ({result.counts.get('written', 0)} samples)",
            flush=True,
        )
