"""The shardflow-index WorkflowTemplate: in sync with workflows/index_dag.py, valid against
Argo's schema, and, run by the local executor that `shardflow run` uses, it writes the same
index as `shardflow index` does in one process."""

from __future__ import annotations

import json
from pathlib import Path

from shardflow.workflows import index_dag, lint
from shardflow.workflows.executor import LocalExecutor

from helpers import good_shard, run_cli

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
    assert not list((tmp_path / "data/.d.shardindex.json.parts").iterdir())  # merged, removed
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
