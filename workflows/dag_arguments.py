"""The command-line form of the DAG's parameters, shared by `shardflow run` and `submit`.

Both commands take the same parameters the Argo form shows: the patterns as positionals, the
common ones as options, and any other as `-p NAME=VALUE` (as `argo submit -p` does).
"""

from __future__ import annotations

import argparse

from shardflow.steps.errors import UsageError

from .parameters import ON_ERROR_CHOICES
from .plan import AUTO

_OPTIONS = ("recipe", "shards_per_task", "on_error")


def add_dag_arguments(parser: argparse.ArgumentParser, *, recipe_help: str, more: str) -> None:
    parser.add_argument("input", metavar="INPUTS", help="input shard pattern")
    parser.add_argument("output", metavar="OUTPUTS", help="output shard pattern, or dir/")
    parser.add_argument("--recipe", help=recipe_help)
    parser.add_argument("--shards-per-task", metavar="N", help=f"shards per task, or {AUTO}")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES)
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"any other workflow parameter (repeatable): {more}",
    )


def given_parameters(args: argparse.Namespace) -> dict[str, str]:
    """Workflow parameter values given on the command line (the rest keep their defaults)."""
    given = {"input": args.input, "output": args.output}
    for name in _OPTIONS:
        value = getattr(args, name)
        if value is not None:
            given[name.replace("_", "-")] = value
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-p {item!r} is not NAME=VALUE")
        given[name] = value
    return given
