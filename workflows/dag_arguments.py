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
from .parameters import BY_NAME, PARAMETERS, refusal

# The parameters with options of their own (the patterns are positionals); any other is
# given as `-p NAME=VALUE`. Help, defaults and choices come from the table (parameters.py).
OPTIONS = ("recipe", "shards-per-task", "on-error")
_METAVARS = {"shards-per-task": "N"}


def add_dag_arguments(
    parser: argparse.ArgumentParser, *, recipe_note: str = "", patterns_note: str = ""
) -> None:
    """The patterns as positionals (optional with a `patterns_note` saying when: a template
    without them, such as the index's, takes every parameter as -p) and the options."""
    optional = {"nargs": "?"} if patterns_note else {}
    parser.add_argument("input", metavar="INPUTS", help=_help("input") + patterns_note, **optional)
    parser.add_argument("output", metavar="OUTPUTS", help=_help("output"), **optional)
    for name in OPTIONS:
        parameter = BY_NAME[name]
        note = recipe_note if name == "recipe" else ""
        parser.add_argument(
            f"--{name}",
            choices=parameter.enum or None,
            metavar=_METAVARS.get(name),
            help=f"{_help(name)}{note} (default: {parameter.default})",
        )
    others = [p.name for p in PARAMETERS if p.name not in ("input", "output", *OPTIONS)]
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"any other workflow parameter (repeatable): {', '.join(others)}",
    )


def _help(name: str) -> str:
    return BY_NAME[name].description.replace("%", "%%")  # argparse formats help with %


def given_parameters(args: argparse.Namespace) -> dict[str, str]:
    """Workflow parameter values given on the command line (the rest keep their defaults)."""
    given = {name: getattr(args, name) for name in ("input", "output")}
    given = {name: value for name, value in given.items() if value is not None}
    for name in OPTIONS:
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            given[name] = value
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-p {item!r} is not NAME=VALUE")
        given[name] = value
    return given


def patterns_named_for(manifest: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """INPUTS and OUTPUTS under the names the manifest declares: `input`/`output` (augment)
    or `inputs`/`outputs` (the reshard template, argo/reshard-workflowtemplate.yaml)."""
    declared = {p.get("name") for p in manifest["spec"].get("arguments", {}).get("parameters", [])}
    if {"input", "output"} & set(given) and not {"input", "inputs"} & declared:
        raise UsageError(
            "this template takes no INPUTS and OUTPUTS: give its parameters with -p NAME=VALUE "
            f"({', '.join(sorted(str(name) for name in declared))})"
        )
    if "input" not in declared and {"inputs", "outputs"} <= declared:
        given = dict(given)
        for name in ("input", "output"):
            if name in given:
                given[name + "s"] = given.pop(name)
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
