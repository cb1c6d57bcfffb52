"""`shardflow reshard` on real tar files, through the real CLI: split, merge, equal counts,
key lists, duplicates, byte ceilings, a recipe on the way, steps run one at a time, and a
write killed with SIGKILL then finished with --skip-existing."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import signal
import time
from array import array
from pathlib import Path

import numpy as np
import pytest
from reshard_helpers import keys_of, make_inputs, members_of, outputs, text_shard

from helpers import good_shard, killing_recipe, run_cli, write_tar


def reshard(*args, **kwargs):
    return run_cli("reshard", *args, **kwargs)


def test_split_one_shard_copies_members_byte_for_byte(tmp_path: Path):
    source = text_shard(tmp_path / "in" / "big.tar", [f"k{i:04d}" for i in range(50)])
    done = reshard(source, tmp_path / "out" / "part-%04d.tar", "--samples-per-shard", "8")
    assert done.returncode == 0, done.stderr
    written = outputs(tmp_path / "out")
    assert [p.name for p in written] == [f"part-{i:04d}.tar" for i in range(7)]
    assert [len(keys_of(p)) for p in written] == [8] * 6 + [2]
    assert [m for p in written for m in members_of(p)] == members_of(source)
    manifest = json.loads((tmp_path / "out" / "part-0000.manifest.json").read_text())
    assert manifest["samples"][0]["from"] == {"shard": str(source), "key": "k0000"}
    assert manifest["recipe"] == {"name": "copy"}
    checked = run_cli("verify", tmp_path / "out" / "part-{0000..0006}.tar")
    assert checked.returncode == 0, checked.stdout
    index = json.loads((tmp_path / "out" / "part.shardindex.json").read_text())
    assert [entry["nsamples"] for entry in index["shardlist"]] == [8] * 6 + [2]
    assert json.loads((tmp_path / "out" / "sizes.json").read_text())["part-0006.tar"] == 2


def test_rerun_writes_identical_bytes(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 3, 10)
    for run in ("a", "b"):
        done = reshard(inputs, tmp_path / run / "o-{0..3}.tar", "--work", tmp_path / f"w{run}")
        assert done.returncode == 0, done.stderr
    assert [p.read_bytes() for p in outputs(tmp_path / "a")] == [
        p.read_bytes() for p in outputs(tmp_path / "b")
    ]


def test_merge_many_into_few_as_the_pattern_names(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 10, 7)
    done = reshard(inputs, tmp_path / "out" / "merged-{0..2}.tar")
    assert done.returncode == 0, done.stderr
    counts = [len(keys_of(p)) for p in outputs(tmp_path / "out")]
    assert counts == [24, 23, 23]  # 70 samples: the first 70 mod 3 get one more
    every = [k for p in outputs(tmp_path / "out") for k in keys_of(p)]
    assert every == [f"s{s:03d}-{i:05d}" for s in range(10) for i in range(7)]


def test_shards_left_by_an_earlier_larger_run_are_named_not_indexed(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 2, 12)
    pattern = tmp_path / "out" / "part-%04d.tar"
    first = reshard(inputs, pattern, "--samples-per-shard", "4")  # 6 outputs
    assert first.returncode == 0, first.stderr
    assert "left from an earlier run" not in first.stderr
    again = reshard(inputs, pattern, "--samples-per-shard", "6")  # 4 outputs
    assert again.returncode == 0, again.stderr
    warning = f"2 shards after this plan's 4 outputs are left from an earlier run ({tmp_path}"
    assert warning in again.stderr and "part-0005.tar); they are not part" in again.stderr
    index = json.loads((tmp_path / "out" / "part.shardindex.json").read_text())
    assert [entry["nsamples"] for entry in index["shardlist"]] == [6] * 4
    assert (tmp_path / "out" / "part-0005.tar").exists()  # someone's data: not removed


@pytest.mark.parametrize("workers", [1, 7, 64])
def test_equal_counts_for_m_workers(tmp_path: Path, workers: int):
    inputs = make_inputs(tmp_path / "in", 4, 50, size=40)
    done = reshard(inputs, tmp_path / "out" / "w-%05d.tar", "--shards", str(workers), "-q")
    assert done.returncode == 0, done.stderr
    counts = [len(keys_of(p)) for p in outputs(tmp_path / "out")]
    assert len(counts) == workers and sum(counts) == 200
    assert max(counts) - min(counts) <= 1


def test_too_few_names_exit_2_saying_how_many(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 2, 10)
    done = reshard(inputs, tmp_path / "out" / "o-{0..2}.tar", "--samples-per-shard", "3")
    assert done.returncode == 2
    assert "names 3 shards but this reshard needs at least 7" in done.stderr
    assert not outputs(tmp_path / "out")
    bytes_capped = reshard(inputs, tmp_path / "out" / "o-{0..1}.tar", "--max-shard-bytes", "8k")
    assert bytes_capped.returncode == 2, bytes_capped.stderr
    assert "needs at least 3" in bytes_capped.stderr
    assert not outputs(tmp_path / "out")


@pytest.mark.parametrize("form", ["txt", "json", "npy"])
def test_keep_ten_percent_by_key_list(tmp_path: Path, form: str):
    inputs = make_inputs(tmp_path / "in", 5, 40, size=40)
    every = [f"s{s:03d}-{i:05d}" for s in range(5) for i in range(40)]
    chosen = [*every[::10], "not-there-1", "not-there-2"]
    keys = tmp_path / f"keys.{form}"
    if form == "txt":
        keys.write_text("\n".join(chosen) + "\n")
    elif form == "json":
        keys.write_text(json.dumps(chosen))
    else:
        np.save(keys, np.array(chosen))
    done = reshard(inputs, tmp_path / "out" / "k-%03d.tar", "--keep-keys", keys, "--shards", "2")
    assert done.returncode == 0, done.stderr
    kept = [k for p in outputs(tmp_path / "out") for k in keys_of(p)]
    assert kept == every[::10]
    assert "2 listed keys are in no input (first: 'not-there-1', 'not-there-2')" in done.stderr
    dropped = reshard(
        inputs, tmp_path / "rest" / "r-%03d.tar", "--drop-keys", keys, "--shards", "1"
    )
    assert dropped.returncode == 0, dropped.stderr
    assert keys_of(outputs(tmp_path / "rest")[0]) == [k for k in every if k not in chosen]


def test_a_pickled_npy_key_list_is_refused(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 1, 5)
    keys = tmp_path / "keys.npy"
    np.save(keys, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    done = reshard(inputs, tmp_path / "out" / "o-%d.tar", "--keep-keys", keys, "--shards", "1")
    assert done.returncode == 2
    assert "not a plain .npy array" in done.stderr


def test_same_key_in_two_inputs(tmp_path: Path):
    text_shard(tmp_path / "in" / "a.tar", ["x", "shared", "y"])
    text_shard(tmp_path / "in" / "b.tar", ["shared", "z"])
    inputs = str(tmp_path / "in" / "{a,b}.tar")
    refused = reshard(inputs, tmp_path / "out" / "o-{0..0}.tar")
    assert refused.returncode == 3
    assert "key 'shared'" in refused.stderr
    assert "a.tar" in refused.stderr and "b.tar" in refused.stderr
    assert not outputs(tmp_path / "out")
    renamed = reshard(inputs, tmp_path / "out" / "o-{0..0}.tar", "--rename-duplicates")
    assert renamed.returncode == 0, renamed.stderr
    (output,) = outputs(tmp_path / "out")
    assert keys_of(output) == ["x", "shared", "y", "shared_dup1", "z"]
    manifest = json.loads((tmp_path / "out" / "o-0.manifest.json").read_text())
    assert manifest["samples"][3]["from"] == {
        "shard": str(tmp_path / "in" / "b.tar"),
        "key": "shared",
    }
    assert (
        dict(members_of(output))["shared_dup1.txt"]
        == dict(members_of(tmp_path / "in" / "b.tar"))["shared.txt"]
    )


def test_max_shard_bytes_is_a_ceiling_and_a_big_sample_stands_alone(tmp_path: Path):
    keys = [f"k{i:03d}" for i in range(30)]
    source = text_shard(tmp_path / "in" / "a.tar", keys, size=3000)
    big = tmp_path / "in" / "b.tar"
    write_tar(big, [("huge.bin", os.urandom(200_000))])
    done = reshard(
        f"{tmp_path}/in/{{a,b}}.tar",
        tmp_path / "out" / "o-%03d.tar",
        "--max-shard-bytes",
        "40k",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    written = outputs(tmp_path / "out")
    sizes = [p.stat().st_size for p in written]
    assert all(size <= 40_000 for size in sizes[:-1])
    assert sizes[-1] > 40_000 and keys_of(written[-1]) == ["huge"]
    manifests = [json.loads(p.with_suffix(".manifest.json").read_text()) for p in written]
    assert [m["reshard"]["oversized"] for m in manifests] == [False] * (len(written) - 1) + [True]
    assert [k for p in written[:-1] for k in keys_of(p)] == keys
    # Filled: no two neighbours could have been one shard.
    assert all(a + b > 40_000 for a, b in itertools.pairwise(sizes[:-1]))
    assert source.exists()


def test_a_recipe_on_the_way(tmp_path: Path):
    for shard in range(2):
        good_shard(tmp_path / "in" / f"in-{shard}.tar", count=4)
    inputs = str(tmp_path / "in" / "in-{0..1}.tar")
    done = reshard(
        inputs, tmp_path / "out" / "o-{0..0}.tar", "--recipe", "seed", "--rename-duplicates"
    )
    assert done.returncode == 0, done.stderr
    names = [name for name, _ in members_of(outputs(tmp_path / "out")[0])]
    assert sorted(names[:2]) == ["0000000000000000.cls", "0000000000000000.png"]
    assert all(name.endswith((".png", ".cls")) for name in names) and len(names) == 16
    assert "0000000000000000_dup1.png" in names
    checked = run_cli("verify", tmp_path / "out" / "o-{0..0}.tar")
    assert checked.returncode == 0, checked.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compare")
def test_a_recipe_on_the_way_is_the_same_bytes_on_one_cpu_or_in_worker_processes(
    tmp_path: Path,
):
    """With a recipe and two CPUs each worker process writes whole outputs; on one CPU the
    outputs are written on threads. Same bytes, same manifests' samples, same read count."""
    for shard in range(3):
        good_shard(tmp_path / "in" / f"in-{shard}.tar", count=5)
    inputs = str(tmp_path / "in" / "in-{0..2}.tar")
    runs = {}
    for name, cpus in (("one", {0}), ("two", set(os.sched_getaffinity(0)))):
        done = run_cli(
            "reshard", inputs, tmp_path / name / "o-{0..3}.tar", "--recipe", "flip-crop",
            "--work", tmp_path / f"work-{name}", "--json", "--rename-duplicates",
            preexec_fn=lambda cpus=cpus: os.sched_setaffinity(0, cpus),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads(done.stdout)
    assert [p.read_bytes() for p in outputs(tmp_path / "one")] == [
        p.read_bytes() for p in outputs(tmp_path / "two")
    ]
    for index in range(4):
        samples = [
            json.loads((tmp_path / n / f"o-{index}.manifest.json").read_text())["samples"]
            for n in ("one", "two")
        ]
        assert samples[0] == samples[1]
    requests = [runs[n]["summary"]["read_requests"] for n in ("one", "two")]
    assert requests[0] == requests[1] > 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two worker processes")
def test_a_worker_killed_while_writing_an_output_fails_that_output_only(tmp_path: Path):
    """With a recipe each worker process writes whole outputs: one killed (the OOM killer's
    way) fails the output it held with 137; the others are written."""
    good_shard(tmp_path / "in" / "in-0.tar", count=8)
    recipe = killing_recipe(tmp_path, f"{1:016x}")  # the second sample: in output 0
    done = run_cli(
        "reshard", tmp_path / "in" / "in-0.tar", tmp_path / "out" / "o-{0..3}.tar",
        "--recipe", recipe, "--plugins", "killer", env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 137, done.stderr
    published = {p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".tar"}
    assert "o-0.tar" not in published and "o-1.tar" in published  # o-1: the other worker's
    for index in range(4):  # the killed worker's queued outputs fail with it, said so
        if f"o-{index}.tar" not in published:
            assert f"output {index} of the plan: not finished: a worker process" in done.stderr


def test_steps_one_at_a_time_as_argo_runs_them(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 5, 6)
    out = str(tmp_path / "out" / "o-%03d.tar")
    common = ["--samples-per-shard", "4", "--inputs-per-task", "2", "--shards-per-task", "3"]
    planned = reshard(inputs, out, *common, "--step", "count", "--write-plan", tmp_path / "p")
    assert planned.returncode == 0, planned.stderr
    assert (tmp_path / "p" / "tasks").read_text() == "3"
    for task in range(3):
        counted = reshard(inputs, out, *common, "--step", "count", "--task-index", str(task))
        assert counted.returncode == 0, counted.stderr
    planned = reshard(inputs, out, *common, "--step", "plan", "--write-plan", tmp_path / "q")
    assert planned.returncode == 0, planned.stderr
    assert (tmp_path / "q" / "tasks").read_text() == "3"  # 30 samples: 8 outputs, 3 a task
    for task in range(3):
        written = reshard(inputs, out, *common, "--step", "write", "--task-index", str(task))
        assert written.returncode == 0, written.stderr
    assert len(outputs(tmp_path / "out")) == 8
    beyond = reshard(inputs, out, *common, "--step", "write", "--task-index", "3")
    assert beyond.returncode == 2 and "out of range" in beyond.stderr


def test_auto_batches_by_default_and_too_many_write_pods_refused_before_writing(
    tmp_path: Path,
):
    """700 outputs: `auto` writes them in 70 batches of 10 (under the 620 pods a workflow
    allows); an explicit 1 would make 700 write pods, refused by the plan step (exit 2) with
    the number that fits, before any output exists."""
    inputs = make_inputs(tmp_path / "in", 2, 350, size=10)
    out = str(tmp_path / "out" / "o-%04d.tar")
    sizing = ["--samples-per-shard", "1"]
    planned = reshard(inputs, out, *sizing, "--step", "count", "--write-plan", tmp_path / "p")
    assert planned.returncode == 0, planned.stderr
    assert (tmp_path / "p" / "tasks").read_text() == "1"  # 2 inputs: one count pod of 100
    assert reshard(inputs, out, *sizing, "--step", "count", "--task-index", "0").returncode == 0
    refused = reshard(
        inputs, out, *sizing, "--shards-per-task", "1", "--step", "plan", "--write-plan",
        tmp_path / "q",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "700 outputs in batches of 1 make 700 tasks, more than the 620" in refused.stderr
    assert "use shards-per-task 2 or more (or auto)" in refused.stderr
    assert not (tmp_path / "q").exists() and not outputs(tmp_path / "out")
    planned = reshard(inputs, out, *sizing, "--step", "plan", "--write-plan", tmp_path / "q")
    assert planned.returncode == 0, planned.stderr
    assert (tmp_path / "q" / "tasks").read_text() == "70"  # auto: 10 outputs a write pod
    last = reshard(inputs, out, *sizing, "--step", "write", "--task-index", "69")
    assert last.returncode == 0, last.stderr
    assert [p.name for p in outputs(tmp_path / "out")] == [
        f"o-{i:04d}.tar" for i in range(690, 700)
    ]


def test_a_write_killed_with_sigkill_is_finished_by_skip_existing(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 4, 50, size=20_000)
    out = tmp_path / "out" / "o-%03d.tar"
    args = [inputs, out, "--samples-per-shard", "5", "--threads", "1"]
    process = reshard(*args, background=True)
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "out").glob("*.manifest.json"))) < 3:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name for p in (tmp_path / "out").glob("*.manifest.json")}
    assert 3 <= len(finished) < 40
    for tar in outputs(tmp_path / "out"):  # nothing partial at an output's name
        assert members_of(tar)
    done = reshard(*args, "--skip-existing")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("skipped, complete") >= len(finished) - 2  # two in flight
    assert len(outputs(tmp_path / "out")) == 40
    reference = reshard(inputs, tmp_path / "ref" / "o-%03d.tar", "--samples-per-shard", "5")
    assert reference.returncode == 0
    assert [p.read_bytes() for p in outputs(tmp_path / "out")] == [
        p.read_bytes() for p in outputs(tmp_path / "ref")
    ]


def test_a_parquet_key_list(tmp_path: Path):
    """A uid column of a Parquet table, as DataComp's filters write it (needs pyarrow, the
    parquet extra); without pyarrow, a usage error saying which extra to install."""
    inputs = make_inputs(tmp_path / "in", 2, 10)
    keys = tmp_path / "keys.parquet"
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        keys.write_bytes(b"PAR1 not really")
        done = reshard(inputs, tmp_path / "o" / "%d.tar", "--keep-keys", keys, "--shards", "1")
        assert done.returncode == 2
        assert "pip install 'shardflow[parquet]'" in done.stderr
        return
    table = pyarrow.table({"uid": ["s000-00003", "s001-00007"], "score": [0.5, 0.9]})
    pyarrow.parquet.write_table(table, keys)
    done = reshard(inputs, tmp_path / "o" / "%d.tar", "--keep-keys", keys, "--shards", "1")
    assert done.returncode == 0, done.stderr
    assert keys_of(outputs(tmp_path / "o")[0]) == ["s000-00003", "s001-00007"]
    named = reshard(
        inputs, tmp_path / "p" / "%d.tar", "--keep-keys", keys, "--keys-column", "score",
        "--shards", "1",
    )  # fmt: skip
    assert named.returncode == 2 and "float values, not keys" in named.stderr


def test_a_plan_edited_to_read_other_files_is_refused(tmp_path: Path):
    """The plan is a file in the work folder: a line naming an input outside INPUTS (here a
    secret beside them) or an output outside OUTPUTS is refused before anything is read."""
    inputs = make_inputs(tmp_path / "in", 2, 4)
    (tmp_path / "secret.tar").write_bytes(b"s" * 4096)
    out = tmp_path / "out" / "o-%d.tar"
    args = [inputs, out, "--samples-per-shard", "4"]
    for step in ("count", "plan"):
        assert reshard(*args, "--step", step).returncode == 0
    work = tmp_path / "out" / ".reshard"
    lines = [json.loads(line) for line in (work / "plan.jsonl").read_text().splitlines()]

    def rewrite(edited: list[dict]) -> None:
        data = [json.dumps(line).encode() + b"\n" for line in edited]
        offsets = [0]
        for piece in data:
            offsets.append(offsets[-1] + len(piece))
        (work / "plan.jsonl").write_bytes(b"".join(data))
        (work / "plan.offsets").write_bytes(array("Q", offsets).tobytes())

    edited = json.loads(json.dumps(lines))
    edited[0]["inputs"][0]["url"] = str(tmp_path / "secret.tar")
    rewrite(edited)
    refused = reshard(*args, "--step", "write")
    assert refused.returncode == 2, refused.stderr
    assert "secret.tar" in refused.stderr and "not one of INPUTS" in refused.stderr
    assert not (tmp_path / "out" / "o-0.tar").exists()
    edited = json.loads(json.dumps(lines))
    edited[1]["url"] = str(tmp_path / "elsewhere.tar")
    rewrite(edited)
    moved = reshard(*args, "--step", "write")
    assert moved.returncode == 2 and "not " in moved.stderr and "of OUTPUTS" in moved.stderr
    assert not (tmp_path / "elsewhere.tar").exists()
    rewrite(lines)
    assert reshard(*args, "--step", "write").returncode == 0


def test_compressed_inputs_are_read_in_order_and_refused_for_shuffle(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 2, 6)
    for path in sorted((tmp_path / "in").glob("*.tar")):
        with open(path, "rb") as plain, gzip.open(f"{path}.gz", "wb") as packed:
            packed.write(plain.read())
    plain = reshard(inputs, tmp_path / "a" / "o-{0..1}.tar")
    packed = reshard(inputs + ".gz", tmp_path / "b" / "o-{0..1}.tar")
    assert plain.returncode == packed.returncode == 0, packed.stderr
    assert [p.read_bytes() for p in outputs(tmp_path / "a")] == [
        p.read_bytes() for p in outputs(tmp_path / "b")
    ]
    shuffled = reshard(inputs + ".gz", tmp_path / "c" / "o-{0..1}.tar", "--shuffle", "1")
    assert shuffled.returncode == 2
    assert "a compressed input has no byte ranges" in shuffled.stderr


def test_an_input_changed_after_counting_is_not_read_at_stale_offsets(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 2, 5)
    args = [inputs, tmp_path / "out" / "o-{0..1}.tar"]
    for step in ("count", "plan"):
        assert reshard(*args, "--step", step).returncode == 0
    text_shard(tmp_path / "in" / "in-001.tar", [f"other-{i}" for i in range(5)])
    written = reshard(*args, "--step", "write")
    assert written.returncode == 3, written.stderr
    assert "in-001.tar" in written.stderr and "changed since it was counted" in written.stderr
    assert [p.name for p in outputs(tmp_path / "out")] == ["o-0.tar"]  # from in-000 alone
    again = reshard(*args)
    assert again.returncode == 0, again.stderr
    assert keys_of(outputs(tmp_path / "out")[1])[-1] == "other-4"


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_json_lines_are_split_whatever_the_chunks(monkeypatch, chunk: int):
    import io

    from shardflow.steps import jsonl

    monkeypatch.setattr(jsonl, "CHUNK", chunk)
    text = b'{"a": 1}\n\n{"b": "' + b"x" * 50 + b'"}\n{"c": 3}'
    assert list(jsonl.lines(io.BytesIO(text))) == [
        b'{"a": 1}',
        b'{"b": "' + b"x" * 50 + b'"}',
        b'{"c": 3}',
    ]
