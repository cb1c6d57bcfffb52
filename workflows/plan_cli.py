"""`shardflow plan INPUT OUTPUT`: the DAG's first pod; also useful by hand to preview a run.

It touches no storage (except to read a recipe given as a URL), so it costs seconds whatever
the dataset's size, and its output parameters are all the DAG needs to fan out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shardflow.steps.cli_common import (
    add_command,
    add_storage_arguments,
    positive_int,
    storage_options,
)
from shardflow.steps.errors import UsageError
from shardflow.steps.recipe import DEFAULT_RECIPE, RECIPE_HELP, load_recipe
from shardflow.steps.redact import redact_url

from .parameters import check_values
from .plan import AUTO, MAX_TASKS, plan_tasks

DESCRIPTION = """\
Check a run's parameters and split it into tasks: expand the INPUT and OUTPUT patterns, check
that they pair up and that the recipe loads, and compute the number of augment tasks and where
verification writes its report. In the Argo DAG this is the first pod; --write-params writes
one file per output parameter (tasks, shards-per-task, outputs, report, sample-sheet).
--check-parameter refuses a workflow parameter outside its allowed values before any other pod
starts (Argo does not enforce enums for `argo submit -p` or the API); cpu and memory, once
checked, are written as output parameters too, for the pods whose spec they set.

exit status: 0 planned, 2 usage error."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "plan",
        DESCRIPTION,
        "check parameters and count the DAG's tasks (the DAG's first pod)",
    )
    parser.add_argument("input", metavar="INPUT", help="input shard URL or brace pattern")
    parser.add_argument("output", metavar="OUTPUT", help="output shard pattern, or dir/")
    parser.add_argument(
        "--shards-per-task",
        default=AUTO,
        metavar="N",
        help=f"shards per augment task, or {AUTO} (default): one per task unless that makes "
        "more than --max-tasks tasks",
    )
    parser.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"the recipe to check: {RECIPE_HELP} (default: {DEFAULT_RECIPE})",
    )
    parser.add_argument(
        "--max-tasks",
        type=positive_int,
        default=MAX_TASKS,
        help=f"refuse plans with more tasks than this (default: {MAX_TASKS})",
    )
    parser.add_argument(
        "--write-params",
        type=Path,
        metavar="DIR",
        help="write each output parameter to DIR/NAME (for Argo's valueFrom.path)",
    )
    parser.add_argument(
        "--check-parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="refuse (exit 2) a workflow parameter value outside its allowed set (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_storage_arguments(parser)  # for a recipe URL, with the pods' options and secrets
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checked = check_values(_name_values(args.check_parameter))
    plan = plan_tasks(args.input, args.output, args.shards_per_task, max_tasks=args.max_tasks)
    load_recipe(args.recipe, storage_options=storage_options(args))
    parameters = {**plan.parameters(), **checked}
    if args.write_params is not None:
        args.write_params.mkdir(parents=True, exist_ok=True)
        for name, value in parameters.items():
            (args.write_params / name).write_text(value)
    if args.json:
        shown = {name: redact_url(value) for name, value in parameters.items()}
        print(json.dumps({"shards": plan.shards, **shown}, indent=1))
    else:
        print(plan.describe())
    return 0


def _name_values(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--check-parameter {item!r} is not NAME=VALUE")
        values[name] = value
    return values
