"""Each DAG parameter is declared once (workflows/parameters.py): the Argo form, `shardflow
run`/`submit` and the step commands read their defaults, choices and help from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hera.workflows import Workflow

from shardflow.workflows import render
from shardflow.workflows.cli import build_parser
from shardflow.workflows.dag_arguments import OPTIONS
from shardflow.workflows.parameters import BY_NAME, PARAMETERS


def options_of(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o: a for a in subparsers.choices[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("command", ["run", "submit"])
def test_run_and_submit_options_come_from_the_table(command: str) -> None:
    options = options_of(command)
    for name in OPTIONS:
        action, parameter = options[f"--{name}"], BY_NAME[name]
        assert list(action.choices or ()) == list(parameter.enum)
        assert parameter.description.split(":")[0] in (action.help or "")
        assert f"(default: {parameter.default})" in (action.help or "")
    others = [p.name for p in PARAMETERS if p.name not in ("input", "output", *OPTIONS)]
    assert all(name in (options["--parameter"].help or "") for name in others)


def test_the_steps_defaults_and_choices_are_the_tables() -> None:
    augment = options_of("augment")
    assert augment["--recipe"].default == BY_NAME["recipe"].default
    assert tuple(augment["--on-error"].choices or ()) == BY_NAME["on-error"].enum
    assert augment["--on-error"].default == BY_NAME["on-error"].default
    assert f"{augment['--max-failed'].default:g}" == BY_NAME["max-failed"].default
    assert options_of("plan")["--recipe"].default == BY_NAME["recipe"].default


def test_the_argo_form_is_the_table() -> None:
    declared = render.to_dict(render.model(Workflow))
    form = {p["name"]: p for p in declared["spec"]["arguments"]["parameters"]}
    assert list(form) == [p.name for p in PARAMETERS]
    for parameter in PARAMETERS:
        assert form[parameter.name]["description"] == parameter.description
        assert form[parameter.name].get("enum", []) == list(parameter.enum)


def test_the_readme_lists_every_parameter_with_its_default() -> None:
    """The README's table of the form is prose for people, checked against the table."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("| parameter | default | meaning |")
    rows = {}
    for line in readme[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip("| ").split(", ") for cell in line.split(" | ")[:2]]
        names, defaults = cells[0], cells[1] * len(cells[0]) if len(cells[1]) == 1 else cells[1]
        for name, default in zip(names, defaults, strict=True):
            rows[name.strip("`")] = default.strip("`")
    for parameter in PARAMETERS:
        shown = rows.get(parameter.name)
        assert shown is not None, f"README: no row for {parameter.name}"
        expected = parameter.default if parameter.default is not None else "(required)"
        assert shown == expected, (parameter.name, shown, expected)
