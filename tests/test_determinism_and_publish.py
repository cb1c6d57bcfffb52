"""Byte-identical output, atomic publish (also under kill -9), skip-existing, batches."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import good_shard, run_cli


def test_two_runs_are_byte_identical_whatever_the_thread_count(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=8)
    for name, threads in (("a", "1"), ("b", "2"), ("c", "4")):
        result = run_cli(
            "augment",
            source,
            tmp_path / f"{name}.tar",
            "--recipe",
            "flip-crop",
            "--threads",
            threads,
        )
        assert result.returncode == 0, result.stderr
    first = (tmp_path / "a.tar").read_bytes()
    assert first == (tmp_path / "b.tar").read_bytes() == (tmp_path / "c.tar").read_bytes()


@pytest.mark.parametrize(
    ("recipe", "size"),
    [("seed", (64, 48)), ("flip-crop", (64, 48)), ("train-224", (600, 400))],  # area, drafted
)
def test_the_same_bytes_whatever_the_workers_processes_or_threads(
    tmp_path: Path, recipe: str, size: tuple[int, int]
) -> None:
    """Worker processes over one shard's samples, the ordered writer in the parent: the shard
    and the manifest's record of every sample are what one worker writes."""
    source = good_shard(tmp_path / "in.tar", count=9, width=size[0], height=size[1])
    runs = {
        "serial": ["--threads", "1"],
        "threads": ["--threads", "2", "--parallel", "threads"],
        "processes": ["--threads", "2", "--parallel", "processes"],
        "three": ["--threads", "3"],  # processes are the default
    }
    for name, options in runs.items():
        result = run_cli("augment", source, tmp_path / f"{name}.tar", "--recipe", recipe, *options)
        assert result.returncode == 0, result.stderr
    shards = {name: (tmp_path / f"{name}.tar").read_bytes() for name in runs}
    assert len(set(shards.values())) == 1
    manifests = [json.loads((tmp_path / f"{n}.manifest.json").read_text()) for n in runs]
    assert len({json.dumps(m["samples"]) + m["output_sha256"] for m in manifests}) == 1
    assert manifests[0]["counts"]["written"] == 9


def test_a_batch_is_the_same_bytes_whether_workers_take_whole_shards_or_samples(
    tmp_path: Path,
) -> None:
    """Three shards: one worker; two worker processes (a whole shard each, then the third
    over both, sample by sample); three (a whole shard each); two threads."""
    for index in range(3):
        good_shard(tmp_path / f"in-{index}.tar", count=5 + index)
    runs = {
        "serial": ["--threads", "1"],
        "two": ["--threads", "2", "--parallel", "processes"],
        "three": ["--threads", "3", "--parallel", "processes"],
        "threads": ["--threads", "2", "--parallel", "threads"],
    }
    for name, options in runs.items():
        output = tmp_path / name / "out-{0..2}.tar"
        result = run_cli(
            "augment", tmp_path / "in-{0..2}.tar", output, "--recipe", "seed", *options
        )
        assert result.returncode == 0, result.stderr
    for index in range(3):
        shards = {(tmp_path / n / f"out-{index}.tar").read_bytes() for n in runs}
        assert len(shards) == 1
        samples = {(tmp_path / n / f"out-{index}.manifest.json").read_text() for n in runs}
        assert len({json.dumps(json.loads(m)["samples"]) for m in samples}) == 1


def test_worker_processes_do_the_work_in_order() -> None:
    from shardflow.steps.parallel import ordered_map, processes_available

    if not processes_available():
        pytest.skip("worker processes need fork (Linux)")
    done = list(
        ordered_map(lambda n: (n, os.getpid()), range(12), threads=2, processes=True, window=3)
    )
    assert [n for n, _ in done] == list(range(12))
    assert os.getpid() not in {pid for _, pid in done}


def test_results_too_big_for_shared_memory_are_pickled_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes hand written members over through shared memory; a sample whose
    members do not fit its slot travels pickled instead, and the shard is the same."""
    from shardflow.steps.augment import AugmentOptions, OutcomeTransfer, augment_shard
    from shardflow.steps.parallel import processes_available
    from shardflow.steps.pipeline import Pipeline
    from shardflow.steps.recipe import load_recipe

    if not processes_available():
        pytest.skip("worker processes need fork (Linux)")
    source = good_shard(tmp_path / "in.tar", count=6)
    pipeline = Pipeline(load_recipe("seed"), max_pixels=1 << 24, allowed_plugins=[])
    outputs = {}
    for name, threads, slot_bytes in (("serial", 1, None), ("shared", 2, None), ("tiny", 2, 600)):
        if slot_bytes:
            monkeypatch.setattr(OutcomeTransfer, "slot_bytes", slot_bytes)
        output = tmp_path / f"{name}.tar"
        options = AugmentOptions(threads=threads, processes=True)
        result = augment_shard(str(source), str(output), pipeline, options)
        assert result.status == "written", result.error
        outputs[name] = output.read_bytes()
    assert outputs["serial"] == outputs["shared"] == outputs["tiny"]


def test_output_members_have_fixed_metadata_and_no_pax_headers(tmp_path: Path) -> None:
    import tarfile

    source = good_shard(tmp_path / "in.tar", count=2)
    assert run_cli("augment", source, tmp_path / "out.tar").returncode == 0
    with tarfile.open(tmp_path / "out.tar") as tar:
        members = tar.getmembers()
        assert all(m.pax_headers == {} for m in members)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o444)
        }
    data = (tmp_path / "out.tar").read_bytes()
    assert len(data) % 10240 == 0 and data[-1024:] == bytes(1024)


def test_kill_9_while_writing_leaves_nothing_at_the_output(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=60, width=900, height=700)
    output = tmp_path / "out" / "out.tar"
    process = run_cli("augment", source, output, "--threads", "1", "--quiet", background=True)
    try:
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline and process.poll() is None:
            partial = [p for p in output.parent.glob(".*.partial") if p.stat().st_size > 2_000_000]
            if partial:
                break
            time.sleep(0.02)
        assert partial, "the step never got to the middle of writing"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not output.exists()
    assert not (output.parent / "out.manifest.json").exists()
    # A rerun publishes the shard whole; the hidden leftover matches no shard pattern.
    result = run_cli("augment", source, output, "--skip-existing")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output.parent / "out.manifest.json").read_text())
    assert manifest["counts"]["written"] == 60


def status_of(result) -> str:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["shards"][0]["status"]


def test_skip_existing_skips_only_a_shard_from_the_same_input_and_recipe(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=2)
    output = tmp_path / "out.tar"
    assert run_cli("augment", source, output).returncode == 0
    before = output.stat().st_mtime_ns
    skipped = run_cli("augment", source, output, "--skip-existing")
    assert skipped.returncode == 0 and "skipped, complete from an earlier run" in skipped.stdout
    assert output.stat().st_mtime_ns == before
    other_recipe = ("--skip-existing", "--recipe", "train-224", "--json")
    assert status_of(run_cli("augment", source, output, *other_recipe)) == "written"
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["recipe"]["name"] == "train-224"
    assert status_of(run_cli("augment", source, output, *other_recipe)) == "skipped"
    os.unlink(output)  # a manifest without its shard is not a finished shard
    assert status_of(run_cli("augment", source, output, *other_recipe)) == "written"
    assert output.exists()


def test_task_index_selects_one_batch_of_shards(tmp_path: Path) -> None:
    for index in range(5):
        good_shard(tmp_path / f"in-{index}.tar", count=1)
    pattern_in, pattern_out = tmp_path / "in-{0..4}.tar", tmp_path / "out-{0..4}.tar"
    result = run_cli(
        "augment", pattern_in, pattern_out, "--task-index", "1", "--shards-per-task", "2"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("out-*.tar")) == ["out-2.tar", "out-3.tar"]
    last = run_cli(
        "augment", pattern_in, pattern_out, "--task-index", "2", "--shards-per-task", "2"
    )
    assert last.returncode == 0 and (tmp_path / "out-4.tar").exists()
    beyond = run_cli(
        "augment", pattern_in, pattern_out, "--task-index", "3", "--shards-per-task", "2"
    )
    assert beyond.returncode == 2 and "out of range" in beyond.stderr


def test_output_directory_receives_shards_of_the_same_names(tmp_path: Path) -> None:
    good_shard(tmp_path / "in-0.tar", count=1)
    good_shard(tmp_path / "in-1.tar", count=1)
    result = run_cli("augment", tmp_path / "in-{0..1}.tar", f"{tmp_path}/out/")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "in-0.manifest.json",
        "in-0.tar",
        "in-1.manifest.json",
        "in-1.tar",
        "in.shardindex.json",
        "sizes.json",
    ]


def test_json_output_for_scripts(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=3)
    result = run_cli("augment", source, tmp_path / "out.tar", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["summary"]["samples"]["written"] == 3
    assert document["shards"][0]["status"] == "written"


def test_relative_and_absolute_paths_name_the_same_shard(tmp_path: Path) -> None:
    good_shard(tmp_path / "in.tar", count=1)
    first = run_cli("augment", "in.tar", "out.tar", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["input"] == str(tmp_path / "in.tar")
    again = run_cli(
        "augment", f"file://{tmp_path}/in.tar", tmp_path / "out.tar", "--skip-existing", "--json"
    )
    assert json.loads(again.stdout)["shards"][0]["status"] == "skipped"
    checked = run_cli("verify", tmp_path / "out.tar", "--inputs", tmp_path / "in.tar")
    assert checked.returncode == 0, checked.stdout
