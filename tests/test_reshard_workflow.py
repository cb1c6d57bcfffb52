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

from helpers import comparable_report, run_cli, sample_members, write_tar

ARGO = Path(__file__).resolve().parents[1] / "argo"


def test_the_rendered_template_is_current_and_valid(argo_validator) -> None:
    manifest = reshard_dag.manifest()
    assert yaml.safe_load((ARGO / reshard_dag.FILE).read_text()) == manifest, (
        "stale: shardflow render --write"
    )
    assert argo_validator(manifest) == []
    assert lint.check_manifest(manifest) == []
    names = {t["name"]: t for t in manifest["spec"]["templates"]}
    for fan_out in ("count", "write", "verify"):
        display = names[fan_out]["annotations"][lint.DISPLAY_NAME]
        assert display == f"{fan_out}-{{{{inputs.parameters.task-index}}}}"
    tasks = {t["name"]: t for t in names["main"]["dag"]["tasks"]}
    assert tasks["write"]["depends"] == "plan.Succeeded"
    assert tasks["plan"]["depends"] == "count.Succeeded"
    assert "write.Failed" in tasks["verify"]["depends"]
    assert tasks["verify"]["withSequence"]["count"] == (
        "{{tasks.plan.outputs.parameters.verify-tasks}}"
    )
    assert tasks["report"]["depends"] == "verify.Succeeded || verify.Failed || verify.Errored"
    (summary,) = names["report"]["outputs"]["parameters"]
    assert summary["globalName"] == "verify-summary"


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
    assert (tasks.count("count"), tasks.count("write"), tasks.count("verify")) == (3, 2, 2)
    assert tasks[-1] == "report"
    report = next(n for n in result.nodes if n.task == "report")
    assert "verify: OK: 4 of 4 shards passed" in report.stdout.read_text()
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


def _image_inputs(root: Path, shards: int, per_shard: int) -> str:
    """JPEG + JSON samples with keys unique across shards; sample 1 of each shard repeats
    shard 0's image (a duplicate group in the dataset report)."""
    for shard in range(shards):
        members = []
        for index in range(per_shard):
            seed = 1 if index == 1 else shard * per_shard + index
            members += sample_members(f"s{shard}-{index:04d}", cls=index % 3, seed=seed)
        write_tar(root / f"in-{shard}.tar", members)
    return str(root / f"in-{{0..{shards - 1}}}.tar")


def test_the_verify_fan_out_merges_what_one_verify_writes(tmp_path: Path) -> None:
    """4 inputs of 5 images into 7 outputs of at most 3, verified in 4 batches of 2 outputs:
    the merged report, sample sheet, dataset report, per-sample table and index are what one
    `verify --plan` writes on the same outputs."""
    inputs = _image_inputs(tmp_path / "in", 4, 5)
    out = tmp_path / "out"
    done = run_cli(
        "run", inputs, out / "o-%03d.tar", "--manifest", ARGO / reshard_dag.FILE,
        "-p", "samples-per-shard=3", "-p", "shuffle=5", "-p", "shards-per-task=2",
        "--workers", "2", "--logs", tmp_path / "logs", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(outputs(out)) == 7
    assert len(list((tmp_path / "logs").glob("verify(*)"))) == 4  # batches of 2, 2, 2 and 1
    assert not (out / ".reshard" / "verify-parts").exists()  # merged, then removed
    merged = comparable_report(out / "verify-report.json")
    assert merged["passed"] and len(merged["shards"]) == 7
    fanned = {n: (out / n).read_bytes() for n in ("verify-samples.png", "o.shardindex.json")}
    fanned["sizes.json"] = (out / "sizes.json").read_bytes()
    dataset = json.loads((out / "dataset-report.json").read_text())
    table = sorted((out / "dataset-samples").glob("*.jsonl"))
    assert [p.name for p in table] == [f"part-{i:06d}.jsonl" for i in range(4)]
    rows = [line for p in table for line in p.read_text().splitlines()]
    single = run_cli(
        "verify", "--plan", out / ".reshard", "--report", tmp_path / "one" / "verify-report.json",
        "--sample-sheet", out / "verify-samples.png", "--dataset-report", tmp_path / "one",
        "--write-index",
    )  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    assert comparable_report(tmp_path / "one" / "verify-report.json") == merged
    for name, data in fanned.items():
        assert (out / name).read_bytes() == data, name  # rewritten identically
    alone = json.loads((tmp_path / "one" / "dataset-report.json").read_text())
    alone.pop("files"), dataset.pop("files")
    assert alone == dataset
    assert dataset["counts"]["samples"] == 20
    assert dataset["duplicates"]["groups"] == 1  # sample 1 of each input: one image, 4 times
    assert (out / "dataset-duplicates.jsonl").read_bytes() == (
        tmp_path / "one" / "dataset-duplicates.jsonl"
    ).read_bytes()
    one_table = tmp_path / "one" / "dataset-samples" / "part-000000.jsonl"
    assert one_table.read_text().splitlines() == rows
