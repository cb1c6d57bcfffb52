"""Checks Argo's JSON schema cannot make: every `{{...}}` resolves, every name exists.

`argo lint` does this server-side; we cannot run it here, so `shardflow render` and the tests
run these checks on every manifest. They cover the constructs our DAG uses (DAG and container
templates, withSequence, depends); anything else is reported rather than guessed at.

One rule no Argo validator checks: the controller matches a template's display name, after
substitution, against `displayNameRegex` (operator.go) and errors the node when it fails, which
leaves a fanned-out DAG running until its deadline. So every display name is checked here with
every value that can be substituted into it.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from shardflow.steps.pairing import MAX_TASKS

from . import argo_vars
from .depends import DependsError, ancestors, upstream

_LOOPS = ("withSequence", "withItems", "withParam")
DISPLAY_NAME = "workflows.argoproj.io/display-name"
# workflow/controller/operator.go `displayNameRegex` (the same in v3.7.x and v4.x).
DISPLAY_NAME_REGEX = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-.]{0,61}[a-zA-Z0-9]$")


def check_manifest(manifest: dict[str, Any]) -> list[str]:
    """Problems found in a Workflow or WorkflowTemplate, one line each ([] when clean)."""
    spec = manifest.get("spec", {})
    templates = {t.get("name"): t for t in spec.get("templates", [])}
    workflow_parameters = {p["name"] for p in spec.get("arguments", {}).get("parameters", [])}
    problems: list[str] = []
    if spec.get("entrypoint") not in templates:
        problems.append(f"entrypoint {spec.get('entrypoint')!r} is not a template")
    for key, value in spec.items():
        if key != "templates":
            problems += _check_strings(f"spec.{key}", value, workflow_parameters, set())
    for name, template in templates.items():
        inputs = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        body = {key: value for key, value in template.items() if key != "dag"}
        retry = argo_vars.RETRY_VARIABLES if "retryStrategy" in template else ()
        problems += _check_strings(f"template {name}", body, workflow_parameters, inputs, retry)
        if "dag" in template:
            problems += _check_dag(name, template["dag"], templates, workflow_parameters, inputs)
    problems += _check_display_names(spec, templates)
    return problems


def _check_display_names(spec: dict[str, Any], templates: dict[str, dict[str, Any]]) -> list[str]:
    """Each display name, with every combination of sample values, must match Argo's regex."""
    problems = []
    for name, template in templates.items():
        display_name = template.get("annotations", {}).get(DISPLAY_NAME)
        if display_name is None:
            continue
        where = f"template {name}: display name {display_name!r}"
        choices: dict[str, list[str]] = {}
        for reference in dict.fromkeys(argo_vars.references(display_name)):
            samples = _samples(reference, name, spec, templates)
            if not samples:
                problems.append(
                    f"{where}: {{{{{reference}}}}} is free text, so no value is sure "
                    "to match Argo's display-name rule"
                )
            choices[reference] = samples
        for combination in itertools.product(*choices.values()):
            value = argo_vars.substitute(
                display_name, dict(zip(choices, combination, strict=True)), where
            )
            if not DISPLAY_NAME_REGEX.match(value):
                problems.append(
                    f"{where}: {value!r} does not match {DISPLAY_NAME_REGEX.pattern} (Argo "
                    "errors the node)"
                )
                break
    return problems


def _samples(
    reference: str, template_name: str, spec: dict[str, Any], templates: dict[str, Any]
) -> list[str]:
    """Every value `reference` can take in template_name, or [] when it is free text.

    A workflow parameter takes its enum (or nothing else is known); a template input takes
    what each calling task passes: `{{item}}` of a withSequence runs from 0 to the largest
    task index, an enum-restricted workflow parameter any of its values, a literal itself.
    """
    scope, _, rest = reference.partition(".parameters.")
    if scope == "workflow":
        parameter: dict[str, Any] = next(
            (p for p in spec.get("arguments", {}).get("parameters", []) if p["name"] == rest), {}
        )
        return [str(v) for v in parameter.get("enum", [])]
    if scope != "inputs":
        return []
    samples: list[str] = []
    for template in templates.values():
        for task in template.get("dag", {}).get("tasks", []):
            if task.get("template") != template_name:
                continue
            given = argo_vars.parameter_values(task.get("arguments", {}).get("parameters"))
            value = given.get(rest)
            references = argo_vars.references(value) if value is not None else []
            if value is None or not references:
                samples += [value] if value is not None else []
            elif references == ["item"] and value.strip() == "{{item}}" and "withSequence" in task:
                samples += ["0", str(MAX_TASKS - 1)]
            elif len(references) == 1 and value.strip() == f"{{{{{references[0]}}}}}":
                inner = _samples(references[0], template.get("name", ""), spec, templates)
                if not inner:
                    return []
                samples += inner
            else:
                return []
    return samples


def _check_strings(
    where: str, value: Any, workflow_parameters: set[str], inputs: set[str], extra: tuple = ()
) -> list[str]:
    problems = []
    for path, text in argo_vars.strings(value):
        for reference in dict.fromkeys(argo_vars.references(text)):
            expression = reference.startswith("=")
            names = argo_vars.expression_variables(reference) if expression else [reference]
            for name in names:
                if name in extra or _resolves(name, workflow_parameters, inputs):
                    continue
                in_tag = f" in {{{{{reference}}}}}" if expression else ""
                problems.append(f"{where}: {path}: {{{{{name}}}}}{in_tag} resolves to nothing")
    return problems


def _resolves(name: str, workflow_parameters: set[str], inputs: set[str]) -> bool:
    scope, _, rest = name.partition(".parameters.")
    if scope == "workflow":
        return rest in workflow_parameters
    if scope == "inputs":
        return rest in inputs
    return False


def _check_dag(
    dag_name: str,
    dag: dict[str, Any],
    templates: dict[str, dict[str, Any]],
    workflow_parameters: set[str],
    inputs: set[str],
) -> list[str]:
    tasks = {task["name"]: task for task in dag.get("tasks", [])}
    problems: list[str] = []
    upstream_of: dict[str, set[str]] = {}
    for name, task in tasks.items():
        try:
            upstream_of[name] = upstream(task)
        except DependsError as exc:
            problems.append(f"template {dag_name}: task {name}: {exc}")
            upstream_of[name] = set()
        missing = upstream_of[name] - set(tasks)
        problems += [
            f"template {dag_name}: task {name}: depends on {t!r}, not a task" for t in missing
        ]
    for name, task in tasks.items():
        where = f"template {dag_name}: task {name}"
        template = templates.get(task.get("template"))
        if template is None:
            problems.append(f"{where}: template {task.get('template')!r} does not exist")
            continue
        before = ancestors(name, upstream_of)
        if any(name in upstream_of.get(t, set()) for t in before | {name}):
            problems.append(f"{where}: its dependencies form a cycle through itself")
        outputs = {
            f"tasks.{t}.outputs.parameters.{p['name']}"
            for t in before
            if t in tasks and tasks[t].get("template") in templates
            for p in templates[tasks[t]["template"]].get("outputs", {}).get("parameters", [])
        }
        loop = ("item",) if any(key in task for key in _LOOPS) else ()
        problems += _check_strings(
            where, task, workflow_parameters, inputs, extra=tuple(outputs) + loop
        )
        problems += _check_arguments(where, task, template)
    return problems


def _check_arguments(where: str, task: dict[str, Any], template: dict[str, Any]) -> list[str]:
    given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
    declared = template.get("inputs", {}).get("parameters", [])
    required = {p["name"] for p in declared if "value" not in p and "default" not in p}
    problems = [
        f"{where}: input {p!r} of {template['name']} is not given" for p in required - given
    ]
    unknown = given - {p["name"] for p in declared}
    problems += [f"{where}: argument {p!r} is not an input of {template['name']}" for p in unknown]
    return problems
