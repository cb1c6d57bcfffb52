"""The retry policy and the OOM memory step in argo/*.yaml, evaluated by Argo's own code.

tests/argoexpr is a small Go program built against Argo Workflows v3.7.18: it evaluates a retry
expression as the controller's processNodeRetries does and substitutes a template as
executeTemplate does once an attempt's number and last exit code are known. So these tests
read the rendered manifests the way a cluster reads them, not through an imitation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardflow.workflows.parameters import MEMORY_CHOICES

ROOT = Path(__file__).resolve().parents[1]
ARGO = ROOT / "argo"
SOURCE = ROOT / "tests" / "argoexpr"


@pytest.fixture(scope="session")
def argo_expr(request: pytest.FixtureRequest):
    """evaluate(request) -> answer, through the Go program (built once, then cached by Go)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: these tests run Argo's own expression code")
    binary = request.config.cache.mkdir("argoexpr") / "argoexpr"
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=SOURCE, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr

    def evaluate(body: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        done = subprocess.run(
            [str(binary)], input=json.dumps(body), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return evaluate


def _templates() -> dict[str, dict[str, Any]]:
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    return {t["name"]: t for t in manifest["spec"]["templates"]}


def _retried(argo_expr, template: str, codes: list[str]) -> dict[str, bool]:
    expression = _templates()[template]["retryStrategy"]["expression"]
    scope = {"retries": "0", "lastRetry.status": "Failed", "lastRetry.duration": "1"}
    body = {
        "retry": [
            {"expression": expression, "scope": {**scope, "lastRetry.exitCode": c}} for c in codes
        ]
    }
    answers = argo_expr(body)["retry"]
    assert all("error" not in a for a in answers), answers
    return {code: a["value"] == "true" for code, a in zip(codes, answers, strict=True)}


@pytest.mark.parametrize("template", ["plan", "augment", "verify"])
def test_storage_errors_evictions_and_oom_kills_are_retried_bad_parameters_and_data_are_not(
    argo_expr, template
):
    # "-1" is Argo's exit code for a container that never exited (eviction, node loss).
    assert _retried(argo_expr, template, ["1", "-1", "137", "2", "3"]) == {
        "1": True,
        "-1": True,
        "137": True,
        "2": False,
        "3": False,
    }


def test_verify_is_retried_only_when_it_did_not_finish(argo_expr):
    """The merge (`report`) exits 1 for a failed verification; a verify batch exits 0 once its
    part is written, whatever it found, so its 1 is storage (retried, above)."""
    assert _retried(argo_expr, "report", ["1", "2", "-1", "137"]) == {
        "1": False,  # a shard failed verification: a result
        "2": False,
        "-1": True,
        "137": True,
    }


def _augment_patch(argo_expr, memory: str, local: dict[str, str], cpu: str = "2") -> str:
    """augment's podSpecPatch for an attempt: plan wrote cpu and memory; `cpu` is the
    workflow parameter as submitted (which the patch must not read)."""
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    template = {**_templates()["augment"]}
    given = {"task-index": "0", "shards-per-task": "1", "cpu": "2", "memory": memory}
    template["inputs"] = {"parameters": [{"name": k, "value": v} for k, v in given.items()]}
    values = {
        p["name"]: str(p.get("value", "x")) for p in manifest["spec"]["arguments"]["parameters"]
    }
    values.update(memory=memory, cpu=cpu)
    body = {
        "substitute": [
            {
                "template": template,
                "global": {f"workflow.parameters.{k}": v for k, v in values.items()},
                "local": local,
            }
        ]
    }
    (answer,) = argo_expr(body)["substitute"]
    assert "error" not in answer, answer
    return answer["value"]


def _memory(patch: str) -> tuple[str, str]:
    resources = yaml.safe_load(patch)["containers"][0]["resources"]
    return resources["requests"]["memory"], resources["limits"]["memory"]


@pytest.mark.parametrize("memory", MEMORY_CHOICES)
def test_the_attempt_after_an_oom_kill_gets_twice_the_memory(argo_expr, memory):
    doubled = f"{2 * int(memory.removesuffix('Gi'))}Gi"
    for last_exit, expected in (("0", memory), ("1", memory), ("-1", memory), ("137", doubled)):
        local = {"retries": "1", "lastRetry.exitCode": last_exit, "lastRetry.status": "Failed"}
        assert _memory(_augment_patch(argo_expr, memory, local)) == (expected, expected)


def test_before_an_attempt_exists_the_memory_expression_waits_unresolved(argo_expr):
    """The controller first substitutes without lastRetry (ProcessArgs): no error, no guess."""
    patch = _augment_patch(argo_expr, "4Gi", {})
    assert "{{=" in patch and "lastRetry.exitCode" in patch


def test_a_parameter_holding_an_expression_cannot_reach_the_pod_spec(argo_expr):
    """Argo substitutes twice: a value holding `{{=...}}` is evaluated in the second pass with
    the pod's own variables, so it could read "2" in the plan pod and inject YAML here. The
    patch reads only what plan wrote, never the parameter."""
    crafted = "{{=inputs.parameters['task-index'] == '0' ? \"2'\\nhostNetwork: true\" : '2'}}"
    local = {"retries": "0", "lastRetry.exitCode": "0", "lastRetry.status": ""}
    patch = _augment_patch(argo_expr, "4Gi", local, cpu=crafted)
    assert "hostNetwork" not in patch
    assert yaml.safe_load(patch)["containers"][0]["resources"]["limits"]["cpu"] == "2"


def test_the_characters_run_and_submit_refuse_are_those_argo_cannot_substitute(argo_expr):
    from shardflow.workflows.argo_vars import unsubstitutable

    template = {"name": "t", "container": {"image": "i", "args": ["{{workflow.parameters.x}}"]}}
    chars = [chr(code) for code in range(0x80)]
    body = {
        "substitute": [
            {"template": template, "global": {"workflow.parameters.x": f"a{c}b"}, "local": {}}
            for c in chars
        ]
    }
    answers = argo_expr(body)["substitute"]
    refused_by_argo = {c for c, a in zip(chars, answers, strict=True) if "error" in a}
    assert refused_by_argo == {c for c in chars if unsubstitutable(c)}
    assert "\x01" in refused_by_argo and "\n" not in refused_by_argo
