"""The shardflow-index WorkflowTemplate: in sync with workflows/index_dag.py, valid against
Argo's schema, and, run by the local executor that `shardflow run` uses, it writes the same
index as `shardflow index` does in one process."""

from __future__ import annotations

import json
from pathlib import Path

from shardflow.steps import dataset_report
from shardflow.workflows import index_dag, lint
from shardflow.workflows.executor import LocalExecutor

from helpers import good_shard, image_bytes, run_cli, write_tar

ARGO = Path(__file__).resolve().parents[1] / "argo"


def test_the_rendered_template_is_current_and_valid(argo_validator) -> None:
    assert (ARGO / index_dag.FILE).read_text() == index_dag.render_index(), (
        "stale: python -m shardflow.workflows.index_dag > argo/index-workflowtemplate.yaml"
    )
    manifest = index_dag.manifest()
    assert argo_validator(manifest) == []
    assert lint.check_manifest(manifest) == []


def test_the_fan_out_writes_the_index_one_process_writes(tmp_path: Path) -> None:
    for number, count in enumerate((2, 3, 1)):
        good_shard(tmp_path / "data" / f"d-{number}.tar", count=count)
    pattern = str(tmp_path / "data/d-{0..2}.tar")
    result = LocalExecutor(
        index_dag.manifest(),
        {"shards": pattern, "shards-per-task": "1", "dali": "yes"},
        workers=2,
        directory=tmp_path / "run",
    ).run()
    assert result.phase == "Succeeded", [(n.name, n.stderr.read_text()) for n in result.nodes]
    assert len([n for n in result.nodes if n.name.startswith("index(")]) == 3
    written = {p.name: p.read_bytes() for p in (tmp_path / "data").glob("*") if p.is_file()}
    assert not (tmp_path / "data/.d.shardindex.json.parts").exists()  # merged, removed
    assert json.loads(written["d.shardindex.json"])["shardlist"][1]["nsamples"] == 3
    assert sorted(written) == [
        "d-0.idx",
        "d-0.tar",
        "d-1.idx",
        "d-1.tar",
        "d-2.idx",
        "d-2.tar",
        "d.shardindex.json",
        "sizes.json",
    ]
    for path in (tmp_path / "data").glob("*"):
        if path.is_file() and path.suffix != ".tar":
            path.unlink()
    alone = run_cli("index", pattern, "--dali")
    assert alone.returncode == 0, alone.stderr
    again = {p.name: p.read_bytes() for p in (tmp_path / "data").glob("*") if p.is_file()}
    assert again == written


def _report_files(folder: Path) -> tuple[dict, list[str], dict[str, bytes]]:
    """The dataset report without its table's file names, the per-sample rows in order, and
    the other files it wrote (duplicate groups, plots)."""
    report = json.loads((folder / "dataset-report.json").read_text())
    tables = report["files"].pop("tables")
    rows = [
        line
        for table in tables
        if table.endswith(".jsonl")
        for line in (folder / table).read_text().splitlines()
    ]
    others = {name: (folder / name).read_bytes() for name in report["files"].values()}
    return report, rows, others


def test_the_fan_out_with_report_yes_writes_what_shardflow_report_writes(tmp_path: Path) -> None:
    """Third-party shards (Python's tarfile, no manifests), one per index pod, an image
    repeated across batches: the merged dataset report, per-sample rows, duplicate groups and
    plots are those of `shardflow report` on the same shards; the report parts are removed."""
    shared = image_bytes(96, 40, "PNG", seed=7)
    write_tar(
        tmp_path / "data" / "s-0.tar",
        [("a0.jpg", image_bytes(64, 48, "JPEG", seed=1)), ("a0.cls", b"3\n"),
         ("a1.png", shared), ("a1.cls", b"4"), ("a2.txt", b"no image here")],
    )  # fmt: skip
    write_tar(
        tmp_path / "data" / "s-1.tar",
        [("b0.webp", image_bytes(120, 90, "WEBP", seed=2)), ("b0.cls", b"3"), ("b1.png", shared)],
    )
    write_tar(tmp_path / "data" / "s-2.tar", [("c0.png", shared), ("c0.cls", b"5")])
    pattern = str(tmp_path / "data" / "s-{0..2}.tar")
    ran = run_cli(
        "run", "--manifest", ARGO / index_dag.FILE, "--workers", "2",
        "-p", f"shards={pattern}", "-p", "shards-per-task=1", "-p", "report=yes",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    parts = tmp_path / "data" / ".s.shardindex.json.parts"
    assert not parts.exists()  # merged, removed, and the emptied folders too
    report, rows, others = _report_files(tmp_path / "data")
    assert [json.loads(row)["key"] for row in rows] == ["a0", "a1", "a2", "b0", "b1", "c0"]
    assert len(list((tmp_path / "data" / "dataset-samples").glob("*.jsonl"))) == 3  # a batch each
    assert set(others) == {"dataset-duplicates.jsonl", *dataset_report.PLOTS.values()}
    assert (tmp_path / "data" / "s.shardindex.json").exists()
    alone = run_cli("report", pattern, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert _report_files(tmp_path / "alone") == (report, rows, others)
    assert b'"b1"' in others["dataset-duplicates.jsonl"]  # the repeat across batches is found


def test_report_is_an_enum_the_plan_step_checks(tmp_path: Path) -> None:
    good_shard(tmp_path / "d-0.tar", count=1)
    refused = run_cli(
        "run", "--manifest", ARGO / index_dag.FILE, "-p", f"shards={tmp_path / 'd-0.tar'}",
        "-p", "report=maybe",
    )  # fmt: skip
    assert refused.returncode == 2 and "report='maybe' is not one of no, yes" in refused.stderr
    plan = run_cli(
        "index", "--write-plan", tmp_path / "p", "--report=maybe", "--", tmp_path / "d-0.tar"
    )
    assert plan.returncode == 2 and "invalid choice: 'maybe'" in plan.stderr
    assert not (tmp_path / "p").exists()


def test_index_with_a_dataset_report_in_one_process_and_a_missing_report_part(
    tmp_path: Path,
) -> None:
    for number in range(2):
        good_shard(tmp_path / "data" / f"d-{number}.tar", count=2)
    pattern = str(tmp_path / "data" / "d-{0..1}.tar")
    one = run_cli("index", "--dataset-report", tmp_path / "one", "--", pattern)
    assert one.returncode == 0, one.stderr
    alone = run_cli("report", pattern, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert _report_files(tmp_path / "one") == _report_files(tmp_path / "alone")
    assert run_cli("index", "--report=yes", "--", pattern).returncode == 2  # a plan's option
    (tmp_path / "data" / "d.shardindex.json").unlink()
    batched = ["--shards-per-task=1", "--parts", tmp_path / "parts", "--dataset-report"]
    for task in range(2):
        done = run_cli("index", "--task-index", str(task), *batched, tmp_path / "r", "--", pattern)
        assert done.returncode == 0, done.stderr
    (tmp_path / "parts" / "report" / "part-000001.json").unlink()
    merged = run_cli("index", "--merge", *batched, tmp_path / "r", "--", pattern)
    assert merged.returncode == 1 and "part-000001.json: missing" in merged.stderr
    assert not (tmp_path / "r" / "dataset-report.json").exists()
    assert not (tmp_path / "data" / "d.shardindex.json").exists()
