"""Pairing inputs with outputs, counting tasks and slicing batches (steps/pairing.py), and the
refusal, before any work, of a run whose writes would destroy its own inputs or each other."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shardflow.steps.errors import UsageError
from shardflow.steps.pairing import (
    AUTO,
    RESHARD_COUNT,
    RESHARD_WRITE,
    Batch,
    Fanout,
    Write,
    location,
    pair_shards,
    refuse_aliases,
    task_count,
)
from shardflow.workflows.plan import MAX_TASKS, plan_tasks

from helpers import good_shard, run_cli


@pytest.mark.parametrize("shards", [1, 2, 7, 10, 1000])
@pytest.mark.parametrize("per_task", [1, 3, 10, 999, 2000])
def test_batches_0_to_count_minus_1_cover_every_pair_exactly_once(shards, per_task):
    last = shards - 1
    pairs = pair_shards(f"s3://in/{{0..{last}}}.tar", f"s3://out/{{0..{last}}}.tar")
    count = task_count(len(pairs), per_task)
    batches = [Batch(index, per_task).of(pairs) for index in range(count)]
    assert [pair for batch in batches for pair in batch] == pairs
    assert all(batches)  # no task is empty
    with pytest.raises(UsageError, match=f"--task-index {count} is out of range"):
        Batch(count, per_task).of(pairs)
    if count <= MAX_TASKS:  # the plan pod publishes the same count
        plan = plan_tasks(f"s3://in/{{0..{last}}}.tar", "s3://out/", str(per_task))
        assert plan.tasks == count


def test_augment_tasks_of_a_plan_write_every_shard_once(tmp_path: Path):
    for index in range(5):
        good_shard(tmp_path / "in" / f"{index}.tar", count=1)
    inputs, outputs = str(tmp_path / "in" / "{0..4}.tar"), str(tmp_path / "out") + "/"
    planned = run_cli("plan", inputs, outputs, "--shards-per-task", "2", "--json")
    assert planned.returncode == 0, planned.stderr
    assert '"tasks": "3"' in planned.stdout
    written = []
    for index in range(3):
        task = run_cli(
            "augment", inputs, outputs, f"--task-index={index}", "--shards-per-task=2", "--json"
        )
        assert task.returncode == 0, task.stderr
        written += [line for line in task.stdout.splitlines() if '"output":' in line]
    assert len(written) == len(set(written)) == 5
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == [
        f"{index}.tar" for index in range(5)
    ]
    beyond = run_cli("augment", inputs, outputs, "--task-index=3", "--shards-per-task=2")
    assert beyond.returncode == 2 and "out of range" in beyond.stderr


def _relative(path: Path) -> str:
    return "./" + os.path.relpath(path, os.getcwd())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """in/x.tar, in/y.tar, and link -> in (a symlinked folder)."""
    good_shard(tmp_path / "in" / "x.tar", count=2)
    good_shard(tmp_path / "in" / "y.tar", count=2, width=40)
    (tmp_path / "link").symlink_to(tmp_path / "in", target_is_directory=True)
    return tmp_path


# (INPUT, OUTPUT) spellings of one file, or of writes that would collide; {t} is tmp_path.
ALIASES = {
    "relative": ("{t}/in/x.tar", "{rel}/in/x.tar"),
    "file-url": ("{t}/in/x.tar", "file://{t}/in/x.tar"),
    "dot-dot": ("{t}/in/x.tar", "{t}/in/../in/x.tar"),
    "symlinked-folder": ("{t}/in/x.tar", "{t}/link/x.tar"),
    "folder-form": ("{t}/in/x.tar", "{rel}/in/"),
    "folder-form-through-link": ("{t}/link/x.tar", "{t}/in/"),
    "crossed-pairs": ("{t}/in/{{x,y}}.tar", "{t}/in/{{y,z}}.tar"),
    "two-inputs-one-output": ("{t}/{{in,link}}/x.tar", "{t}/out/"),
}


@pytest.mark.parametrize("command", ["augment", "plan"])
@pytest.mark.parametrize("case", sorted(ALIASES))
def test_writes_onto_an_input_or_onto_each_other_are_refused_first(folder, command, case):
    source, target = (text.format(t=folder, rel=_relative(folder)) for text in ALIASES[case])
    before = {p: p.read_bytes() for p in (folder / "in").iterdir()}
    result = run_cli(command, source, target)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected = "map to the same output" if case == "two-inputs-one-output" else "both an input"
    assert expected in lines[0]
    assert {p: p.read_bytes() for p in (folder / "in").iterdir()} == before  # nothing touched
    assert not (folder / "out").exists()


def test_an_input_that_is_a_symlink_is_protected_at_its_target(tmp_path: Path):
    target = good_shard(tmp_path / "data" / "x.tar", count=2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.tar").symlink_to(target)
    before = target.read_bytes()
    result = run_cli("augment", tmp_path / "in" / "x.tar", tmp_path / "data" / "x.tar")
    assert result.returncode == 2 and "both an input" in result.stderr
    assert target.read_bytes() == before


def test_an_output_that_is_a_symlink_to_an_input_is_replaced_not_followed(tmp_path: Path):
    """Publishing renames onto the output's name, so the link is replaced and the input kept:
    this is not an alias, and refusing it would be a false alarm."""
    source = good_shard(tmp_path / "in" / "x.tar", count=2)
    before = source.read_bytes()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.tar").symlink_to(source)
    result = run_cli("augment", source, tmp_path / "out" / "x.tar")
    assert result.returncode == 0, result.stderr
    assert source.read_bytes() == before
    assert not (tmp_path / "out" / "x.tar").is_symlink()


def test_run_refuses_to_overwrite_its_input_instead_of_verifying_it(folder):
    """`shardflow run in/x.tar ./in/x.tar` used to replace the input and end with verify: OK."""
    before = (folder / "in" / "x.tar").read_bytes()
    result = run_cli("run", folder / "in" / "x.tar", f"{_relative(folder)}/in/x.tar")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "both an input and an output" in result.stdout + result.stderr
    assert "verify: OK" not in result.stdout
    assert (folder / "in" / "x.tar").read_bytes() == before
    assert not (folder / "in" / "x.manifest.json").exists()


def test_verify_does_not_write_its_report_over_a_shard(tmp_path: Path):
    source = good_shard(tmp_path / "in.tar", count=2)
    assert run_cli("augment", source, tmp_path / "out.tar").returncode == 0
    before = source.read_bytes()
    for option, target in (("--report", "in.tar"), ("--sample-sheet", "out.manifest.json")):
        result = run_cli(
            "verify", tmp_path / "out.tar", "--inputs", source, option, tmp_path / target
        )
        assert result.returncode == 2 and "both an input" in result.stderr, result.stderr
    assert source.read_bytes() == before
    assert run_cli("verify", tmp_path / "out.tar").returncode == 0  # its manifest is intact


def test_plan_refuses_a_verify_report_at_a_shard():
    with pytest.raises(UsageError, match="the verify report"):
        plan_tasks("s3://b/in/{a,b}.tar", "s3://b/{verify-report.json,x.tar}", check_urls=False)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("S3://Bucket/a/./b/../x.tar", "s3://bucket/a/x.tar"),
        ("s3a://bucket/a/x.tar", "s3://bucket/a/x.tar"),
        ("s3://key:secret@bucket/a/x.tar", "s3://bucket/a/x.tar"),
        ("gcs://bucket//a/x.tar", "gs://bucket/a/x.tar"),
        ("https://Host.Example:443/a/x.tar", "https://host.example/a/x.tar"),
        ("http://host:80/a/x.tar", "http://host/a/x.tar"),
    ],
)
def test_urls_are_compared_normalised(url, same):
    assert location(url, written=False) == location(same, written=True)
    with pytest.raises(UsageError, match="both an input and an output"):
        refuse_aliases([url], [Write(same, "an output")])


def test_other_ports_and_hosts_are_other_places():
    assert location("http://host:8080/x.tar", written=False) != location(
        "http://host/x.tar", written=False
    )
    refuse_aliases(["s3://a/x.tar"], [Write("s3://b/x.tar", "out"), Write("s3://a/y.tar", "out")])


def test_credentials_are_not_quoted_in_the_refusal():
    with pytest.raises(UsageError) as refused:
        refuse_aliases(["s3://key:secret@bucket/x.tar"], [Write("s3://bucket/x.tar", "an output")])
    assert "secret" not in str(refused.value)
    assert "s3://REDACTED@bucket/x.tar" in str(refused.value)


def test_an_output_manifest_may_not_land_on_an_input():
    with pytest.raises(UsageError, match=re.escape("the manifest of 's3://b/x.tar'")):
        pair_shards("s3://b/{x.manifest.json,y.tar}", "s3://b/{x.tar,z.tar}")


def test_an_output_may_not_land_on_the_dataset_index_a_run_writes():
    with pytest.raises(UsageError, match="the shard counts"):
        pair_shards("s3://b/in/{a,b}.tar", "s3://b/out/{a.tar,sizes.json}")
    with pytest.raises(UsageError, match="the dataset index"):
        pair_shards("s3://b/in/{a,b}.tar", "s3://b/out/{a.tar,a.shardindex.json}")


def test_index_does_not_write_its_index_over_a_shard(tmp_path: Path):
    for index in range(2):
        good_shard(tmp_path / f"in-{index}.tar", count=1)
    before = (tmp_path / "in-0.tar").read_bytes()
    result = run_cli("index", tmp_path / "in-{0..1}.tar", "--index", tmp_path / "in-0.tar")
    assert result.returncode == 2 and "both an input" in result.stderr, result.stderr
    assert (tmp_path / "in-0.tar").read_bytes() == before


@pytest.mark.parametrize("outputs", [1, 8, 1000, 10**6])
@pytest.mark.parametrize("per_task", [1, 3, 10, 1000])
def test_reshard_write_batches_cover_every_output_of_the_plan_exactly_once(outputs, per_task):
    """A reshard's write tasks take output numbers from a range (a plan of a million outputs
    is never a list): batches 0..count-1 cover each exactly once, in order."""
    count = task_count(outputs, per_task)
    if count > 10_000:
        per_task = -(-outputs // 1000)
        count = task_count(outputs, per_task)
    covered = [index for task in range(count) for index in Batch(task, per_task).of(range(outputs))]
    assert covered == list(range(outputs))
    assert all(len(Batch(task, per_task).of(range(outputs))) for task in range(count))
    with pytest.raises(UsageError, match="out of range"):
        Batch(count, per_task).of(range(outputs))


@pytest.mark.parametrize("items", [0, 1, 99, 100, 101, 18_000, 18_001, 100_000, 10**6])
@pytest.mark.parametrize(
    "fanout", [RESHARD_COUNT, RESHARD_WRITE, Fanout("shards-per-task", "shards")]
)
def test_auto_batches_are_the_smallest_that_keep_a_fan_out_under_its_cap(fanout, items):
    per_task = fanout.per_task(AUTO, items)
    assert per_task >= fanout.smallest
    assert task_count(items, per_task) <= fanout.max_tasks
    if per_task > fanout.smallest:  # one fewer per task would make too many tasks
        assert task_count(items, per_task - 1) > fanout.max_tasks


def test_the_reshard_fan_outs_share_the_augment_fan_outs_cap():
    """Count and write tasks come before verify as augment tasks do: together, no more."""
    assert RESHARD_COUNT.max_tasks + RESHARD_WRITE.max_tasks == MAX_TASKS
    assert (RESHARD_COUNT.per_task(AUTO, 1000), RESHARD_WRITE.per_task(AUTO, 1000)) == (100, 10)
    assert RESHARD_COUNT.per_task(AUTO, 100_000) == 556  # 180 count tasks
    assert RESHARD_WRITE.per_task(AUTO, 100_000) == 162  # 618 write tasks


def test_a_number_of_tasks_above_the_cap_is_refused_with_the_number_that_fits():
    with pytest.raises(UsageError) as refused:
        RESHARD_COUNT.per_task("100", 100_000)
    assert str(refused.value) == (
        "100000 inputs in batches of 100 make 1000 tasks, more than the 180 a workflow handles "
        "well: use inputs-per-task 556 or more (or auto), or split the dataset into several "
        "workflows (README: scaling)"
    )
    assert RESHARD_COUNT.per_task(556, 100_000) == 556
    assert RESHARD_WRITE.per_task("1", 100_000, refuse=False) == 1  # a local run: no pods
    for bad in ("0", "-3", "ten", "1.5", ""):
        with pytest.raises(UsageError, match=f"shards-per-task {bad!r} is neither"):
            RESHARD_WRITE.per_task(bad, 10)
