"""The Argo manifests in argo/: in sync with the code, schema-valid, Hera round-trip, wired right.

Set SHARDFLOW_UPDATE_MANIFESTS=1 to rewrite argo/ from the code (as Hera's golden tests do),
or run `shardflow render --write`.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hera.workflows import Workflow, WorkflowTemplate

from shardflow.workflows import lint, render
from shardflow.workflows.plan import MAX_TASKS

from helpers import run_cli

ARGO = Path(__file__).resolve().parents[1] / "argo"
KINDS = {
    "workflow.yaml": Workflow,
    "workflowtemplate.yaml": WorkflowTemplate,
    "index-workflowtemplate.yaml": WorkflowTemplate,
    "reshard-workflowtemplate.yaml": WorkflowTemplate,
}


def test_checked_in_manifests_are_the_rendered_ones():
    rendered = render.render_all()
    assert set(rendered) == set(KINDS)
    if os.environ.get("SHARDFLOW_UPDATE_MANIFESTS") == "1":
        for name, text in rendered.items():
            (ARGO / name).write_text(text)
    for name, text in rendered.items():
        assert (ARGO / name).read_text() == text, (
            f"argo/{name} is out of date: run `shardflow render --write`"
        )


@pytest.mark.parametrize("name", sorted(KINDS))
def test_manifest_is_valid_against_argo_schema(name, argo_validator):
    manifest = yaml.safe_load((ARGO / name).read_text())
    assert manifest["kind"] == KINDS[name].__name__
    assert argo_validator(manifest) == []


def test_schema_check_catches_an_integer_in_an_int_or_string_field(argo_validator):
    """Argo's published schema types int-or-string as string: the reason limits are strings."""
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    broken = copy.deepcopy(manifest)
    broken["spec"]["templates"][0]["retryStrategy"]["backoff"]["factor"] = 2
    assert argo_validator(broken)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_manifest_round_trips_through_hera(name):
    text = (ARGO / name).read_text()
    assert KINDS[name].from_yaml(text).to_dict() == yaml.safe_load(text)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_reference_resolves_and_every_name_exists(name):
    manifest = yaml.safe_load((ARGO / name).read_text())
    assert lint.check_manifest(manifest) == []


def _workflow() -> dict:
    return yaml.safe_load((ARGO / "workflow.yaml").read_text())


def _template(manifest: dict, name: str) -> dict:
    return next(t for t in manifest["spec"]["templates"] if t["name"] == name)


def _task(manifest: dict, name: str) -> dict:
    return next(t for t in _template(manifest, "main")["dag"]["tasks"] if t["name"] == name)


def test_lint_reports_an_undeclared_workflow_parameter():
    manifest = _workflow()
    _template(manifest, "augment")["container"]["args"][1] = "--recipe={{workflow.parameters.rcp}}"
    assert any("{{workflow.parameters.rcp}}" in p for p in lint.check_manifest(manifest))


def test_lint_reads_the_variables_of_expression_tags():
    manifest = _workflow()
    augment = _template(manifest, "augment")
    augment["podSpecPatch"] = augment["podSpecPatch"].replace(
        "inputs.parameters.memory", "workflow.parameters.mem"
    )
    del _template(manifest, "verify")["retryStrategy"]
    _template(manifest, "verify")["podSpecPatch"] = "x: '{{=lastRetry.exitCode}}'"
    problems = lint.check_manifest(manifest)
    assert any("template augment" in p and "{{workflow.parameters.mem}}" in p for p in problems)
    assert any("template verify" in p and "{{lastRetry.exitCode}}" in p for p in problems)
    assert len(problems) == 2, problems


def test_lint_reports_an_undeclared_input():
    manifest = _workflow()
    parameters = _template(manifest, "verify")["inputs"]["parameters"]
    parameters.remove({"name": "outputs"})
    problems = lint.check_manifest(manifest)
    assert any("{{inputs.parameters.outputs}}" in p for p in problems)
    assert any("'outputs' is not an input of verify" in p for p in problems)


def test_lint_reports_a_missing_template_and_dependency():
    manifest = _workflow()
    _task(manifest, "augment")["template"] = "augmnt"
    _task(manifest, "verify")["depends"] = "plan.Succeeded && augmnt.Failed"
    problems = lint.check_manifest(manifest)
    assert any("template 'augmnt' does not exist" in p for p in problems)
    assert any("depends on 'augmnt', not a task" in p for p in problems)


def test_lint_reports_item_outside_a_loop_and_outputs_of_a_task_not_waited_for():
    manifest = _workflow()
    _task(manifest, "report")["arguments"]["parameters"][0]["value"] = "{{item}}"
    del _task(manifest, "augment")["depends"]
    problems = lint.check_manifest(manifest)
    assert any("task report" in p and "{{item}}" in p for p in problems)
    assert any("task augment" in p and "tasks.plan.outputs" in p for p in problems)


def test_lint_reports_a_dependency_cycle():
    manifest = _workflow()
    _task(manifest, "plan")["depends"] = "verify"
    assert any("task plan" in p and "cycle" in p for p in lint.check_manifest(manifest))


def test_lint_reports_a_required_input_not_given():
    manifest = _workflow()
    _task(manifest, "augment")["arguments"]["parameters"].pop(0)  # task-index
    assert any(
        "input 'task-index' of augment is not given" in p for p in lint.check_manifest(manifest)
    )


def _display_name_problems(display_name: str) -> list[str]:
    manifest = _workflow()
    _template(manifest, "augment")["annotations"][lint.DISPLAY_NAME] = display_name
    return [p for p in lint.check_manifest(manifest) if "display name" in p]


def test_lint_reports_a_display_name_argo_refuses_after_substitution():
    """Argo 3.7+ errors a node whose substituted display name fails its regex; the DAG stalls."""
    assert _display_name_problems("augment-{{inputs.parameters.task-index}}") == []
    spaced = _display_name_problems("augment batch {{inputs.parameters.task-index}}")
    assert len(spaced) == 1 and "'augment batch 0'" in spaced[0]


def test_lint_substitutes_the_largest_task_index_and_every_enum_value():
    long_name = "a" * 60 + "-{{inputs.parameters.task-index}}"  # 63 chars at index 9, 64 at 100
    assert any(f"-{MAX_TASKS - 1}'" in p for p in _display_name_problems(long_name))
    assert _display_name_problems("memory-{{workflow.parameters.memory}}") == []
    assert any("'x1Gi.'" in p for p in _display_name_problems("x{{workflow.parameters.memory}}."))


def test_lint_refuses_free_text_in_a_display_name():
    problems = _display_name_problems("in-{{workflow.parameters.input}}")
    assert any("{{workflow.parameters.input}} is free text" in p for p in problems)
    from_plan = _display_name_problems("batch-{{inputs.parameters.shards-per-task}}")
    assert any("is free text" in p for p in from_plan)


def test_manifest_does_not_depend_on_the_dataset():
    """No shard URL and no count: tasks receive an index and expand the pattern themselves."""
    text = (ARGO / "workflow.yaml").read_text()
    manifest = yaml.safe_load(text)
    augment = _task(manifest, "augment")
    assert augment["withSequence"] == {"count": "{{tasks.plan.outputs.parameters.tasks}}"}
    assert "withItems" not in augment and "withParam" not in augment
    assert len(text) < 20_000


def test_verify_runs_after_failed_augment_tasks_and_never_stops_the_dag_early():
    manifest = _workflow()
    assert _template(manifest, "main")["dag"]["failFast"] is False
    depends = _task(manifest, "verify")["depends"]
    assert "augment.Failed" in depends and "augment.Errored" in depends


def test_pods_are_locked_down():
    manifest = _workflow()
    pod = manifest["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    for name in ("plan", "augment", "verify"):
        template = _template(manifest, name)
        security = template["container"]["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in template["container"]["volumeMounts"]
        assert template["retryStrategy"]["backoff"]["duration"]


def test_parameters_have_descriptions_and_free_text_never_reaches_the_pod_spec():
    """A podSpecPatch reads only values the plan pod checked against their enum and wrote as
    outputs (every patched pod waits for plan): Argo itself does not enforce enums for `-p`
    or the API, and evaluates `{{...}}` inside parameter values (test_retry_policy.py)."""
    from shardflow.workflows.argo_vars import RETRY_VARIABLES, expression_variables, references

    manifest = _workflow()
    parameters = {p["name"]: p for p in manifest["spec"]["arguments"]["parameters"]}
    assert all(p.get("description") for p in parameters.values())
    plan_args = _template(manifest, "plan")["container"]["args"]
    patched = [t for t in manifest["spec"]["templates"] if "podSpecPatch" in t]
    assert {t["name"] for t in patched} == {"augment", "verify"}
    for template in patched:
        task = _task(manifest, template["name"])
        assert task["depends"].startswith("plan.Succeeded")
        given = {p["name"]: p["value"] for p in task["arguments"]["parameters"]}
        for reference in references(template["podSpecPatch"]):
            for name in expression_variables(reference) or [reference]:
                if name in RETRY_VARIABLES:
                    continue
                assert name.startswith("inputs.parameters."), name
                value = name.removeprefix("inputs.parameters.")
                assert given[value] == f"{{{{tasks.plan.outputs.parameters.{value}}}}}"
                assert parameters[value].get("enum"), value
                check = f"--check-parameter={value}={{{{workflow.parameters.{value}}}}}"
                assert check in plan_args


def test_an_oom_killed_attempt_is_retried_with_twice_the_memory():
    patch = yaml.safe_load(_template(_workflow(), "augment")["podSpecPatch"])
    memory = patch["containers"][0]["resources"]["limits"]["memory"]
    assert "lastRetry.exitCode" in memory and "inputs.parameters.memory" in memory
    assert patch["containers"][0]["resources"]["requests"]["memory"] == memory


def test_render_command_checks_writes_and_prints(tmp_path):
    stale = run_cli("render", "--out", tmp_path)
    assert stale.returncode == 1
    assert "out of date" in stale.stderr
    assert run_cli("render", "--out", tmp_path, "--write").returncode == 0
    assert (tmp_path / "workflow.yaml").read_text() == (ARGO / "workflow.yaml").read_text()
    current = run_cli("render", "--out", tmp_path)
    assert current.returncode == 0, current.stderr
    (tmp_path / "workflow.yaml").write_text("# edited\n")
    diff = run_cli("render", "--out", tmp_path)
    assert diff.returncode == 1 and "-# edited" in diff.stdout
    printed = run_cli("render", "--out", "-", "--image", "registry.example/shardflow:1")
    documents = list(yaml.safe_load_all(printed.stdout))
    assert [d["kind"] for d in documents] == ["WorkflowTemplate", "Workflow"] + [
        "WorkflowTemplate"
    ] * 2
    assert [d["metadata"]["name"] for d in documents[2:]] == [
        "shardflow-index",
        "shardflow-reshard",
    ]
    for name in ("index-workflowtemplate.yaml", "reshard-workflowtemplate.yaml"):
        assert (tmp_path / name).read_text() == (ARGO / name).read_text()
    image = next(p for p in documents[1]["spec"]["arguments"]["parameters"] if p["name"] == "image")
    assert image["value"] == "registry.example/shardflow:1"


def test_step_commands_do_not_import_hera():
    """A pod running `shardflow augment` or `verify` must not pay for importing Hera."""
    code = (
        "import sys; from shardflow.workflows import cli; cli.build_parser(); "
        "print('hera' in sys.modules or any(m.startswith('hera.') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_workflows_from_the_template_carry_its_title_and_description():
    template = yaml.safe_load((ARGO / "workflowtemplate.yaml").read_text())
    annotations = template["metadata"]["annotations"]
    assert "workflows.argoproj.io/title" in annotations
    assert template["spec"]["workflowMetadata"]["annotations"] == annotations
    assert "Argo Workflows\n3.7 or newer" in annotations["workflows.argoproj.io/description"]
