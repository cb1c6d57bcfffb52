"""`shardflow verify --plan`: the lineage of a reshard's outputs, and the ways it breaks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reshard_helpers import make_inputs

from shardflow.steps.reshard_lineage import plan_outputs

from helpers import comparable_report, run_cli, sample_members, write_tar


def resharded(tmp_path: Path, *args: str) -> tuple[str, Path]:
    inputs = make_inputs(tmp_path / "in", 4, 9)
    done = run_cli("reshard", inputs, tmp_path / "out" / "o-%02d.tar", "--shards", "3", *args)
    assert done.returncode == 0, done.stderr
    return inputs, tmp_path / "out" / ".reshard"


def verify_plan(work: Path, *args: str):
    return run_cli("verify", "--plan", work, "--json", *args)


def test_a_shuffled_filtered_reshard_passes(tmp_path: Path):
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(f"s{s:03d}-{i:05d}" for s in range(4) for i in range(0, 9, 2)))
    _, work = resharded(tmp_path, "--shuffle", "5", "--keep-keys", str(keys))
    checked = verify_plan(work)
    assert checked.returncode == 0, checked.stdout
    report = json.loads(checked.stdout)
    assert report["passed"] and len(report["shards"]) == 3
    assert sum(s["samples"] for s in report["shards"]) == 20


def test_an_output_replaced_by_another_is_named(tmp_path: Path):
    _, work = resharded(tmp_path)
    out = work.parent
    for suffix in (".tar", ".manifest.json"):
        shutil.copy(out / f"o-01{suffix}", out / f"o-00{suffix}")
    checked = verify_plan(work)
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    problems = {s["output"]: [p["kind"] for p in s["problems"]] for s in report["shards"]}
    assert problems[str(out / "o-00.tar")] == ["lineage"]
    assert problems[str(out / "o-01.tar")] == []
    message = report["shards"][0]["problems"][0]["message"]
    assert "holds 12 samples its plan line does not give it" in message
    assert "lacks 12 it gives" in message


def test_a_sample_left_out_of_the_plan_is_found_from_the_inventory(tmp_path: Path):
    _, work = resharded(tmp_path)
    lines = [json.loads(line) for line in (work / "plan.jsonl").read_text().splitlines()]
    lines[2]["samples"].pop()
    (work / "plan.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = json.loads((work / "plan.json").read_text())
    summary["samples"] -= 1
    (work / "plan.json").write_text(json.dumps(summary))
    checked = run_cli("verify", "--plan", work)
    assert checked.returncode == 1
    last = checked.stdout.strip().splitlines()[-1]
    assert "lineage: 1 kept input samples are in no output" in last, last
    assert "o-02.tar" in checked.stdout  # its manifest holds a sample its line no longer gives


def test_an_invented_sample_is_named(tmp_path: Path):
    _, work = resharded(tmp_path)
    manifest_path = work.parent / "o-00.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["samples"][0]["from"]["key"] = "never-there"
    manifest_path.write_text(json.dumps(manifest))
    checked = verify_plan(work)
    assert checked.returncode == 1
    message = json.loads(checked.stdout)["shards"][0]["problems"][0]["message"]
    assert "holds 1 samples its plan line does not give it ('s000-00000')" in message


def test_verify_needs_outputs_or_a_plan(tmp_path: Path):
    refused = run_cli("verify")
    assert refused.returncode == 2
    assert "--plan" in refused.stderr
    missing = run_cli("verify", "--plan", tmp_path / "nothing")
    assert missing.returncode == 2, missing.stderr


def test_samples_a_recipe_fails_are_accounted_for(tmp_path: Path):
    """A recipe on the way: a sample it cannot decode is listed as failed by its (new) key,
    which the lineage check counts as the plan's sample, not as one lost."""
    members = []
    for index in range(4):
        members += sample_members(f"k{index}", seed=index)
    members += [("broken.jpg", b"\xff\xd8 not a jpeg"), ("broken.json", b'{"cls": 1}')]
    write_tar(tmp_path / "in" / "a.tar", members)
    done = run_cli(
        "reshard", tmp_path / "in" / "a.tar", tmp_path / "out" / "o-{0..1}.tar",
        "--recipe", "seed",
    )  # fmt: skip
    assert done.returncode == 3  # 1 of 5 failed: more than --max-failed allows
    assert "failed" in done.stderr
    again = run_cli(
        "reshard", tmp_path / "in" / "a.tar", tmp_path / "out" / "o-{0..1}.tar",
        "--recipe", "seed", "--max-failed", "0.5", "--skip-existing",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    manifest = json.loads((tmp_path / "out" / "o-1.manifest.json").read_text())
    assert [f["key"] for f in manifest["failed"]] == ["broken"]
    checked = run_cli("verify", "--plan", tmp_path / "out" / ".reshard", "--max-failed", "0.5")
    assert checked.returncode == 0, checked.stdout


def test_in_batches_only_the_merge_checks_the_lineage_and_finds_what_one_process_finds(
    tmp_path: Path,
):
    """The reshard DAG's verify: batches (--plan --task-index) exit 0 with their parts, the
    merge names the output whose manifest holds another's samples, as one process does."""
    _, work = resharded(tmp_path)
    out = work.parent
    for suffix in (".tar", ".manifest.json"):
        shutil.copy(out / f"o-01{suffix}", out / f"o-00{suffix}")
    parts = ["--shards-per-task", "2", "--parts", work / "verify-parts"]
    for task in range(2):
        batch = run_cli("verify", "--plan", work, "--task-index", task, *parts)
        assert batch.returncode == 0, batch.stderr
        assert "lineage" not in batch.stdout + batch.stderr
    merged = run_cli("verify", "--plan", work, "--merge", *parts, "--report", tmp_path / "m.json")
    single = run_cli("verify", "--plan", work, "--report", tmp_path / "s.json")
    assert merged.returncode == single.returncode == 1
    report = comparable_report(tmp_path / "m.json")
    assert report == comparable_report(tmp_path / "s.json")
    problems = [[p["kind"] for p in s["problems"]] for s in report["shards"]]
    assert problems == [["lineage"], [], []]


def test_a_plan_names_its_outputs_without_its_lines(tmp_path: Path):
    """A verify batch reads plan.json only; a plan written before it recorded the pattern
    is read line by line, with the same result."""
    _, work = resharded(tmp_path)
    expected = [str(work.parent / f"o-{index:02d}.tar") for index in range(3)]
    lines = work / "plan.jsonl"
    kept = lines.read_bytes()
    lines.write_bytes(b"")  # not read
    assert plan_outputs(str(work), {}) == expected
    lines.write_bytes(kept)
    summary = json.loads((work / "plan.json").read_text())
    del summary["output_pattern"]
    (work / "plan.json").write_text(json.dumps(summary))
    assert plan_outputs(str(work), {}) == expected
