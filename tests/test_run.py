"""`shardflow run`: the rendered manifests executed end to end on real shards, as Argo would."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from shardflow.steps.errors import UsageError
from shardflow.workflows.dag_arguments import resolve_parameters
from shardflow.workflows.executor import LocalExecutor

from helpers import good_shard, run_cli

ARGO = Path(__file__).resolve().parents[1] / "argo"
SHARDS = 3
OUT = "/tmp/out"  # inside the probe's emptyDir
SAID = "{{tasks.first.outputs.parameters.said}}"


@pytest.fixture
def shards(tmp_path: Path) -> tuple[str, str, Path]:
    for index in range(SHARDS):
        good_shard(tmp_path / "in" / f"in-{index:06d}.tar", count=4, width=64, height=48)
    last = f"{SHARDS - 1:06d}"
    inputs = str(tmp_path / "in" / f"in-{{000000..{last}}}.tar")
    outputs = str(tmp_path / "out" / f"out-{{000000..{last}}}.tar")
    return inputs, outputs, tmp_path


def test_rendered_workflow_runs_end_to_end(shards):
    inputs, outputs, tmp = shards
    logs = tmp / "logs"
    manifest = ARGO / "workflow.yaml"
    result = run_cli(
        "run", inputs, outputs, "--manifest", manifest, "--workers", "2", "--logs", logs
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp / "out"
    for index in range(SHARDS):
        assert (out / f"out-{index:06d}.tar").is_file()
        assert (out / f"out-{index:06d}.manifest.json").is_file()
    report = json.loads((out / "verify-report.json").read_text())
    assert [shard["status"] for shard in report["shards"]] == ["ok"] * SHARDS
    assert (out / "verify-samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wids = json.loads((out / "out.shardindex.json").read_text())  # verify --write-index
    assert [entry["nsamples"] for entry in wids["shardlist"]] == [4] * SHARDS
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith(f"verify: OK: {SHARDS} of {SHARDS} shards passed")
    assert any(line.split()[:2] == ["shard", "samples"] for line in lines)  # the table
    assert "workflow Succeeded" in result.stdout

    # Each pod ran the manifest's command line, with its own progress file, finished N/N.
    for index in range(SHARDS):
        node = logs / f"augment({index})"
        command = json.loads((node / "command.json").read_text())
        assert command[3:] == [
            "augment",
            "--recipe=seed",
            "--on-error=skip",
            "--max-failed=0.01",
            f"--task-index={index}",
            "--shards-per-task=1",
            "--skip-existing",
            "--",
            inputs,
            outputs,
        ]
        done, total = (node / "progress").read_text().split("/")
        assert done == total != "0"
    plan_outputs = logs / "plan" / "volumes" / "tmp" / "plan"  # the pod's emptyDir /tmp
    assert (plan_outputs / "tasks").read_text() == str(SHARDS)

    again = run_cli("run", inputs, outputs, "-p", "shards-per-task=2", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("augment(") == 2
    assert again.stdout.count("0 written, 2 skipped") == 1  # --skip-existing on a rerun


def test_a_failed_task_still_gets_verified_and_fails_the_run(shards):
    inputs, outputs, tmp = shards
    broken = tmp / "in" / "in-000001.tar"
    broken.write_bytes(broken.read_bytes()[:1500])  # cut mid-member
    manifest = ARGO / "workflowtemplate.yaml"
    result = run_cli("run", inputs, outputs, "--manifest", manifest, "--workers", "2")
    assert result.returncode == 1, result.stdout + result.stderr  # verify's: a shard is missing
    # A damaged shard is a data error (3): Argo's retry expression does not retry it.
    assert "augment(1): Failed (exit status 3)" in result.stdout
    assert "in-000001.tar" in result.stdout  # the step's one-line error, shown under the task
    assert "workflow Failed" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("verify: FAILED")
    report = json.loads((tmp / "out" / "verify-report.json").read_text())
    assert [shard["status"] for shard in report["shards"]] == ["ok", "missing", "ok"]
    assert "task logs in" in result.stdout


def test_a_usage_error_stops_at_the_plan_pod(shards):
    inputs, outputs, tmp = shards
    result = run_cli("run", inputs, outputs, "--recipe", "no-such-recipe")
    assert result.returncode == 2
    assert "plan: Failed (exit status 2)" in result.stdout
    assert "unknown recipe 'no-such-recipe'" in result.stdout
    assert "augment: omitted" in result.stdout and "verify: omitted" in result.stdout
    assert not (tmp / "out").exists()


def test_a_value_outside_its_enum_stops_at_the_plan_pod(shards, tmp_path):
    """`argo submit -p` and the API pass parameters without their enum (Argo's util.go
    overrideParameters; argoproj/argo-workflows#6959): the plan pod refuses the value, so
    no pod with a podSpecPatch is ever created."""
    inputs, outputs, tmp = shards
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    for parameter in manifest["spec"]["arguments"]["parameters"]:
        parameter.pop("enum", None)
    given = {"input": inputs, "output": outputs, "cpu": "2'\nfoo: bar"}
    executor = LocalExecutor(manifest, given, workers=2, directory=tmp_path / "logs")
    result = executor.run()
    assert (result.phase, result.exit_code) == ("Failed", 2)
    assert [node.name for node in result.nodes] == ["plan"]
    assert result.outcomes["augment"].phase == result.outcomes["verify"].phase == "Omitted"
    error = result.nodes[0].stderr.read_text().splitlines()
    assert error == [
        'shardflow plan: error: parameter cpu="2\'\\nfoo: bar" is not one of 1, 2, 4, 8, 16'
    ]
    assert not (tmp / "out").exists()


def test_parameters_are_checked_as_argo_checks_them():
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    given = {"input": "a.tar", "output": "b.tar"}
    assert resolve_parameters(manifest, given)["recipe"] == "seed"
    with pytest.raises(UsageError, match="parameter cpu='3' is not one of"):
        resolve_parameters(manifest, {**given, "cpu": "3"})
    with pytest.raises(UsageError, match="unknown parameter 'cpus'"):
        resolve_parameters(manifest, {**given, "cpus": "2"})
    with pytest.raises(UsageError, match="parameter 'output' is required"):
        resolve_parameters(manifest, {"input": "a.tar"})
    with pytest.raises(UsageError, match=r"parameter recipe contains '\\x01': Argo cannot"):
        resolve_parameters(manifest, {**given, "recipe": "seed\x01"})
    assert resolve_parameters(manifest, {**given, "recipe": "{\n\t}"})["recipe"] == "{\n\t}"


def _probe_manifest() -> dict:
    """A DAG of plain Python containers: what the executor does with any manifest."""
    probe = (
        "import json, os, sys; "
        "facts = [os.environ['GREETING'], sys.argv[2], len(os.sched_getaffinity(0)), "
        "os.environ['TMPDIR']]; "
        "open(os.path.join(sys.argv[1], 'out'), 'w').write(json.dumps(facts) + '\\n')"
    )
    container = {
        "image": "unused",
        # A parameter, not a literal: a literal path under /tmp would be the pod's emptyDir.
        "command": ["{{workflow.parameters.python}}", "-c", probe],
        "args": ["/tmp", "{{inputs.parameters.word}}"],
        "env": [{"name": "GREETING", "value": "{{workflow.parameters.greeting}}"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "spec": {
            "entrypoint": "main",
            "arguments": {
                "parameters": [
                    {"name": "greeting", "value": "hello"},
                    {"name": "python", "value": sys.executable},
                ]
            },
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "templates": [
                {
                    "name": "say",
                    "inputs": {"parameters": [{"name": "word"}]},
                    "container": container,
                    "outputs": {
                        "parameters": [{"name": "said", "valueFrom": {"path": "/tmp/out"}}]
                    },
                },
                {
                    "name": "main",
                    "dag": {
                        "tasks": [
                            {
                                "name": "first",
                                "template": "say",
                                "arguments": {"parameters": [{"name": "word", "value": "x"}]},
                            },
                            {
                                "name": "each",
                                "template": "say",
                                "depends": "first",
                                "withItems": ["a", "b", "c"],
                                "arguments": {
                                    "parameters": [
                                        {
                                            "name": "word",
                                            "value": "{{item}}-" + SAID,
                                        }
                                    ]
                                },
                            },
                        ]
                    },
                },
            ],
        }
    }


def test_executor_substitutes_maps_empty_dirs_reads_outputs_and_pins_workers(tmp_path):
    executor = LocalExecutor(_probe_manifest(), {}, workers=2, directory=tmp_path)
    result = executor.run()
    assert result.phase == "Succeeded" and result.exit_code == 0
    said = {node.name: node.outputs["said"] for node in result.nodes}
    first = json.loads(said["first"])  # output parameter: the file, less its final newline
    assert first[:2] == ["hello", "x"]
    for index, item in enumerate("abc"):
        greeting, word, cpus, tmpdir = json.loads(said[f"each({index})"])
        assert (greeting, word) == ("hello", f"{item}-{said['first']}")
        assert tmpdir == str(tmp_path / f"each({index})" / "volumes" / "tmp")
        assert cpus == first[2]
    available = len(os.sched_getaffinity(0))
    assert first[2] == max(1, available // 2)  # each of 2 workers has its share of the CPUs


def test_one_bar_sums_every_node_progress_file(tmp_path, capsys):
    from shardflow.workflows.executor import Node
    from shardflow.workflows.run_cli import _Display

    nodes = [Node(f"augment({i})", "augment", {}, {}, tmp_path / str(i)) for i in range(3)]
    for node, text in zip(nodes, ["37/100", "not progress", "250/100"], strict=True):
        node.directory.mkdir()
        node.progress_file.write_text(text)
    assert [node.progress() for node in nodes] == [0.37, 0.0, 1.0]  # as Argo reads N/M
    display = _Display(quiet=False, bar=True)
    display.progress(sum(node.progress() for node in nodes), len(nodes), nodes[:2])
    display.close()
    bar = capsys.readouterr().err
    assert "1.4/3 tasks" in bar and "running augment(0), augment(1)" in bar
