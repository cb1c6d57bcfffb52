"""Verify as a fan-out: batches of shards each leave a part, one light step merges them into
the report, the sample sheet, the index, the summary and the dataset report; the result is
what one process verifying every shard writes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from shardflow.steps import spool_sort
from shardflow.steps.errors import UsageError
from shardflow.steps.output_names import OutputNames
from shardflow.steps.reshard_cli import plan_parameters
from shardflow.workflows import argo_vars
from shardflow.workflows.plan import MAX_NODES, plan_tasks

from helpers import comparable_report, good_shard, run_cli

ARGO = Path(__file__).resolve().parents[1] / "argo"
SHARDS = 5


def _nodes(manifest: dict, outputs: dict[str, dict[str, str]]) -> int:
    """Nodes of the workflow when every pod succeeds at once, as the controller makes them:
    the DAG's, a retry node and a pod per task or loop item (every template retries), and a
    group node per loop. `outputs`: the output parameters of each planning task."""
    templates = {t["name"]: t for t in manifest["spec"]["templates"]}
    main = templates[manifest["spec"]["entrypoint"]]
    scope = {
        f"tasks.{task}.outputs.parameters.{name}": value
        for task, values in outputs.items()
        for name, value in values.items()
    }
    count = 1
    for task in main["dag"]["tasks"]:
        assert "retryStrategy" in templates[task["template"]]
        if "withSequence" in task:
            items = int(argo_vars.substitute(task["withSequence"]["count"], scope, task["name"]))
            count += 1 + 2 * items
        else:
            assert not ({"withItems", "withParam"} & set(task))
            count += 2
    return count


@pytest.mark.parametrize("shards", [1, 555, 100_000, 1_000_000])
def test_a_workflow_stays_under_the_node_limit_whatever_its_size(shards: int) -> None:
    last = shards - 1
    plan = plan_tasks(f"s3://b/in/{{0..{last}}}.tar", f"s3://b/out/{{0..{last}}}.tar")
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    nodes = _nodes(manifest, {"plan": plan.parameters()})
    assert nodes < MAX_NODES
    assert plan.verify_tasks <= spool_sort.FAN_IN  # the merge reads every batch's hashes at once
    if shards == 100_000:
        assert (plan.tasks, plan.verify_tasks) == (800, 180)
        assert plan.verify_shards_per_task == 556  # no verify pod reads more than its batch


def test_a_reshard_of_100000_inputs_into_100000_outputs_stays_under_the_node_limit(
    tmp_path: Path,
) -> None:
    """The template's defaults (`auto` batches) for 100,000 inputs resharded into 100,000
    outputs: the batches step's outputs as `reshard --step count --write-plan` writes them,
    the plan step's as its `plan_parameters` computes them, counted in the rendered template."""
    manifest = yaml.safe_load((ARGO / "reshard-workflowtemplate.yaml").read_text())
    defaults = {p["name"]: p.get("value") for p in manifest["spec"]["arguments"]["parameters"]}
    assert (defaults["inputs-per-task"], defaults["shards-per-task"]) == ("auto", "auto")
    inputs, outputs = "in/{000000..099999}.tar", "out/%06d.tar"
    per_task = f"--inputs-per-task={defaults['inputs-per-task']}"
    counted = run_cli(
        "reshard", "--step=count", "--write-plan=p", per_task, "--", inputs, outputs, cwd=tmp_path
    )
    assert counted.returncode == 0, counted.stderr
    batches = {name: (tmp_path / "p" / name).read_text() for name in ("tasks", "work")}
    assert batches["tasks"] == "180"  # 556 inputs a count pod
    names = [f"in/{index:06d}.tar" for index in range(100_000)]
    work = "s3://b/out/.reshard"
    written = plan_parameters(
        100_000, defaults["shards-per-task"], names, OutputNames("s3://b/out/%06d.tar"), work
    )
    assert (written["tasks"], written["verify-tasks"]) == ("618", "180")  # 162 outputs a pod
    assert written["verify-shards-per-task"] == "556"  # no verify pod reads more than its batch
    assert written["report"] == "s3://b/out/verify-report.json"
    assert written["report-dir"] == "s3://b/out"
    assert written["verify-parts"] == f"{work}/verify-parts"
    nodes = _nodes(manifest, {"batches": batches, "plan": written})
    assert nodes == 10 + 2 * (180 + 618 + 180) < MAX_NODES


def test_the_reshard_plan_refuses_write_batches_above_the_cap() -> None:
    names = OutputNames("s3://b/out/%06d.tar")
    with pytest.raises(UsageError, match="use shards-per-task 162 or more"):
        plan_parameters(100_000, 10, ["s3://b/in/x.tar"], names, "s3://b/out/.reshard")


def test_the_reshard_plan_refuses_a_verify_file_at_an_output() -> None:
    names = OutputNames("s3://b/out/{a.tar,verify-report.json}")
    with pytest.raises(UsageError, match=r"verify-report.json' \(the verify report\)"):
        plan_parameters(2, 1, ["s3://b/in/x.tar"], names, "s3://b/out/.reshard")


@pytest.fixture
def run_outputs(tmp_path: Path) -> Path:
    """A local run of the rendered workflow (argo/workflow.yaml): 5 shards, verified in 5
    batches."""
    for index in range(SHARDS):
        good_shard(tmp_path / "in" / f"in-{index}.tar", count=3, width=48, height=40)
    result = run_cli(
        "run",
        tmp_path / "in" / "in-{0..4}.tar",
        tmp_path / "out" / "out-{0..4}.tar",
        "--recipe",
        "seed",
        "--workers",
        "2",
        "--logs",
        tmp_path / "logs",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "logs").glob("verify(*)"))) == SHARDS  # one batch per shard
    assert not (tmp_path / "out" / ".verify-parts").exists()  # merged, then removed
    return tmp_path


def test_merged_report_is_the_single_processcomparable_report(run_outputs: Path) -> None:
    tmp, out = run_outputs, run_outputs / "out"
    fanned = {
        name: (out / name).read_bytes()
        for name in ("verify-samples.png", "out.shardindex.json", "sizes.json")
    }
    merged = comparable_report(out / "verify-report.json")
    merged_dataset = json.loads((out / "dataset-report.json").read_text())
    table = sorted((out / "dataset-samples").iterdir())
    assert [p.name for p in table if p.suffix == ".jsonl"] == [
        f"part-{i:06d}.jsonl" for i in range(SHARDS)
    ]
    rows = [line for p in table if p.suffix == ".jsonl" for line in p.read_text().splitlines()]
    single = run_cli(
        "verify",
        "--inputs",
        tmp / "in" / "in-{0..4}.tar",
        "--max-failed",
        "0.01",
        "--report",
        tmp / "single" / "verify-report.json",
        "--sample-sheet",
        out / "verify-samples.png",
        "--dataset-report",
        tmp / "single",
        "--write-index",
        out / "out-{0..4}.tar",
    )
    assert single.returncode == 0, single.stdout + single.stderr
    assert comparable_report(tmp / "single" / "verify-report.json") == merged
    for name, data in fanned.items():
        assert (out / name).read_bytes() == data, name  # rewritten identically
    alone = json.loads((tmp / "single" / "dataset-report.json").read_text())
    assert alone.pop("files")["tables"] == ["dataset-samples/part-000000.jsonl"] + (
        ["dataset-samples/part-000000.parquet"] if len(table) > SHARDS else []
    )
    merged_dataset.pop("files")
    assert alone == merged_dataset
    assert (
        tmp / "single" / "dataset-samples" / "part-000000.jsonl"
    ).read_text().splitlines() == rows
    assert merged_dataset["counts"]["samples"] == SHARDS * 3


def test_merged_failures_match_and_a_missing_part_is_named(tmp_path: Path) -> None:
    """Damage found by different batches, pairing checked across them; the same verdict as
    one process; the merge names a batch that left no part."""
    for index in range(4):
        good_shard(tmp_path / "in" / f"in-{index}.tar", count=2)
    outputs, inputs = tmp_path / "out" / "out-{0..3}.tar", tmp_path / "in" / "in-{0..3}.tar"
    assert run_cli("augment", inputs, outputs, "--recipe", "seed").returncode == 0
    shard = tmp_path / "out" / "out-1.tar"
    shard.write_bytes(shard.read_bytes()[:1536])  # truncated
    (tmp_path / "out" / "out-3.tar").unlink()  # missing, manifest left
    with tarfile.open(tmp_path / "out" / "out-2.tar", "a") as archive:  # a member appended
        archive.addfile(tarfile.TarInfo("zz.txt"))
    parts = tmp_path / "parts"
    common = ["--inputs", inputs, "--expect", "png,cls", outputs]
    for task in range(2):
        batch = run_cli(
            "verify", "--task-index", task, "--shards-per-task", 2, "--parts", parts, *common
        )
        assert batch.returncode == 0, batch.stderr  # the verdict is the merge's
    merge = ["--merge", "--shards-per-task", 2, "--parts", parts]
    merged = run_cli("verify", *merge, "--report", tmp_path / "merged.json", *common)
    single = run_cli("verify", "--report", tmp_path / "single.json", *common)
    assert merged.returncode == single.returncode == 1
    report = comparable_report(tmp_path / "merged.json")
    assert report == comparable_report(tmp_path / "single.json")
    statuses = [s["status"] for s in report["shards"]]
    assert statuses == ["ok", "failed", "failed", "missing"]
    again = run_cli("verify", *merge, *common)  # the parts were removed by the merge
    assert again.returncode == 1
    assert "part-000000.json: missing: batch 0 has not been verified" in again.stderr


def test_a_stale_part_of_other_shards_is_refused(tmp_path: Path) -> None:
    for index in range(2):
        good_shard(tmp_path / "in" / f"in-{index}.tar", count=1)
    outputs = tmp_path / "out" / "out-{0..1}.tar"
    assert run_cli("augment", tmp_path / "in" / "in-{0..1}.tar", outputs).returncode == 0
    parts = tmp_path / "parts"
    for task in range(2):
        args = ("--task-index", task, "--shards-per-task", 1, "--parts", parts, outputs)
        assert run_cli("verify", *args).returncode == 0
    merged = run_cli("verify", "--merge", "--shards-per-task", 2, "--parts", parts, outputs)
    assert merged.returncode == 1 and "does not describe batch 0" in merged.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task-index", "0"], "need --parts and --shards-per-task"),
        (["--merge", "--task-index", "0"], "exclude each other"),
        (["--parts", "p"], "--parts needs --task-index or --merge"),
        (["--task-index", "9", "--shards-per-task", "1", "--parts", "p"], "out of range"),
    ],
)
def test_batch_options_are_checked_before_any_work(tmp_path: Path, args, message) -> None:
    good_shard(tmp_path / "s-0.tar", count=1)
    result = run_cli("verify", *args, tmp_path / "s-{0..1}.tar")
    assert result.returncode == 2 and message in result.stderr
