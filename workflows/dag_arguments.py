"""The command-line form of the DAG's parameters, shared by `shardflow run` and `submit`.

Both commands take the same parameters the Argo form shows: the patterns as positionals, the
common ones as options, and any other as `-p NAME=VALUE` (as `argo submit -p` does); both
resolve them against the rendered manifest as Argo would (`resolve_parameters`).
"""

from __future__ import annotations

import argparse
from typing import Any

from shardflow.steps.errors import UsageError

from . import argo_vars
from .parameters import ON_ERROR_CHOICES, refusal
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


def resolve_parameters(manifest: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """Workflow parameter values: defaults, overridden by `given`, checked as Argo checks them."""
    declared = manifest["spec"].get("arguments", {}).get("parameters", [])
    names = {p["name"] for p in declared}
    unknown = sorted(set(given) - names)
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(names))})")
    values = {**argo_vars.parameter_values(declared), **given}
    for parameter in declared:
        name = parameter["name"]
        if name not in values:
            raise UsageError(f"parameter {name!r} is required: {parameter.get('description', '')}")
        bad = argo_vars.unsubstitutable(values[name])
        if bad:
            raise UsageError(
                f"parameter {name} contains {bad!r}: Argo cannot substitute it (the template "
                "would no longer be valid JSON)"
            )
        enum = parameter.get("enum")
        if enum and values[name] not in enum:
            raise UsageError(refusal(name, values[name], enum))
    return values
