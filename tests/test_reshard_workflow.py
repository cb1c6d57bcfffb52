"""The shardflow-reshard WorkflowTemplate: rendered by `shardflow render`, valid against
Argo's schema, and, run by the local executor `shardflow run` uses, it writes the bytes
`shardflow reshard` writes in one process, then verifies the lineage."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from reshard_helpers import keys_of, make_inputs, outputs

from shardflow.workflows import lint, reshard_dag
from shardflow.workflows.executor import LocalExecutor

from helpers import run_cli

ARGO = Path(__file__).resolve().parents[1] / "argo"


def test_the_rendered_template_is_current_and_valid(argo_validator) -> None:
    manifest = reshard_dag.manifest()
    assert yaml.safe_load((ARGO / reshard_dag.FILE).read_text()) == manifest, (
        "stale: shardflow render --write"
    )
    assert argo_validator(manifest) == []
    assert lint.check_manifest(manifest) == []
    names = {t["name"]: t for t in manifest["spec"]["templates"]}
    for fan_out in ("count", "write"):
        display = names[fan_out]["annotations"][lint.DISPLAY_NAME]
        assert display == f"{fan_out}-{{{{inputs.parameters.task-index}}}}"
    tasks = {t["name"]: t for t in names["main"]["dag"]["tasks"]}
    assert tasks["write"]["depends"] == "plan.Succeeded"
    assert tasks["plan"]["depends"] == "count.Succeeded"
    assert "write.Failed" in tasks["verify"]["depends"]


def test_the_fan_out_writes_what_one_process_writes(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in", 5, 9)
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(f"s{s:03d}-{i:05d}" for s in range(5) for i in range(0, 9, 3)))
    parameters = {
        "inputs": inputs,
        "outputs": str(tmp_path / "dag" / "o-%03d.tar"),
        "samples-per-shard": "4",
        "keep-keys": str(keys),
        "shuffle": "11",
        "inputs-per-task": "2",
        "shards-per-task": "2",
    }
    result = LocalExecutor(
        reshard_dag.manifest(), parameters, workers=2, directory=tmp_path / "run"
    ).run()
    assert result.phase == "Succeeded", [(n.name, n.stderr.read_text()) for n in result.nodes]
    tasks = [n.task for n in result.nodes]
    assert tasks.count("count") == 3 and tasks.count("write") == 2 and tasks[-1] == "verify"
    verify = next(n for n in result.nodes if n.task == "verify")
    assert "verify: OK: 4 of 4 shards passed" in verify.stdout.read_text()
    sizes = json.loads((tmp_path / "dag" / "sizes.json").read_text())  # verify --write-index
    assert sorted(sizes.values()) == [3, 4, 4, 4]
    alone = run_cli(
        "reshard", inputs, tmp_path / "one" / "o-%03d.tar", "--samples-per-shard", "4",
        "--keep-keys", keys, "--shuffle", "11",
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    assert [p.read_bytes() for p in outputs(tmp_path / "dag")] == [
        p.read_bytes() for p in outputs(tmp_path / "one")
    ]
    assert sum(len(keys_of(p)) for p in outputs(tmp_path / "dag")) == 15


def test_shardflow_run_runs_the_rendered_file(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in", 2, 5)
    done = run_cli(
        "run", inputs, tmp_path / "out" / "o-{0..2}.tar", "--manifest", ARGO / reshard_dag.FILE,
        "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [len(keys_of(p)) for p in outputs(tmp_path / "out")] == [4, 3, 3]
    assert "verify: OK: 3 of 3 shards passed" in done.stdout
