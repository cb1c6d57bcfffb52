"""--skip-existing skips only what is really done: the same input, recipe and options, beside
a shard of the recorded size (with --verify-existing, a shard passing verify); a damaged
manifest costs its own shard, never the batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import good_shard, run_cli, sample_members, write_tar


def augment(*args: str | Path):
    return run_cli("augment", *args, "--skip-existing", "--json")


def statuses(result) -> list[str]:
    return [shard["status"] for shard in json.loads(result.stdout)["shards"]]


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_truncated_or_emptied_shard_is_redone(tmp_path: Path, damage: str):
    source = good_shard(tmp_path / "in.tar", count=3)
    output = tmp_path / "out.tar"
    assert augment(source, output).returncode == 0
    whole = output.read_bytes()
    output.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"")
    rerun = augment(source, output)
    assert rerun.returncode == 0, rerun.stderr
    assert statuses(rerun) == ["written"]
    assert output.read_bytes() == whole
    assert run_cli("verify", output).returncode == 0


def test_a_same_size_damage_is_redone_with_verify_existing(tmp_path: Path):
    source = good_shard(tmp_path / "in.tar", count=3)
    output = tmp_path / "out.tar"
    assert augment(source, output).returncode == 0
    whole = output.read_bytes()
    flipped = bytearray(whole)
    flipped[1024] ^= 0xFF  # inside the first member's data: same size, other bytes
    output.write_bytes(bytes(flipped))
    assert statuses(augment(source, output)) == ["skipped"]  # the size alone cannot tell
    checked = augment(source, output, "--verify-existing")
    assert statuses(checked) == ["written"], checked.stderr
    assert output.read_bytes() == whole
    assert statuses(augment(source, output, "--verify-existing")) == ["skipped"]
    alone = run_cli("augment", source, output, "--verify-existing")
    assert alone.returncode == 2 and "--skip-existing" in alone.stderr


def test_options_that_change_the_result_are_part_of_what_must_match(tmp_path: Path):
    members = [*sample_members("big", width=400, height=300), *sample_members("small")]
    source = write_tar(tmp_path / "in.tar", members)
    output = tmp_path / "out.tar"
    tolerant = ("--max-failed", "1")
    first = augment(source, output, "--max-mpx", "0.1", *tolerant)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["summary"]["samples"]["failed"] == 1
    assert statuses(augment(source, output, "--max-mpx", "0.1", *tolerant)) == ["skipped"]

    strict = augment(source, output, "--max-mpx", "0.1", "--on-error", "fail", *tolerant)
    assert statuses(strict) == ["failed"]  # redone under --on-error fail, not skipped
    assert "key 'big'" in strict.stderr

    larger = augment(source, output, *tolerant)  # the default --max-mpx admits the image
    assert statuses(larger) == ["written"], larger.stderr
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["counts"]["written"] == 2
    assert manifest["options"]["max_pixels"] == 64_000_000


def test_a_malformed_manifest_costs_its_shard_not_the_batch(tmp_path: Path):
    for index in range(3):
        good_shard(tmp_path / f"in-{index}.tar", count=2, width=40 + index)
    inputs, outputs = tmp_path / "in-{0..2}.tar", tmp_path / "out-{0..2}.tar"
    assert augment(inputs, outputs).returncode == 0

    # Valid JSON of the right format, input and recipe, but fields of the wrong types.
    manifest_path = tmp_path / "out-1.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "counts": [], "output_size": "big"}))
    rerun = augment(inputs, outputs)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert statuses(rerun) == ["skipped", "written", "skipped"]
    assert json.loads(manifest_path.read_text())["counts"]["written"] == 2

    # A manifest that cannot be read at all fails its shard, with one line; the rest go on.
    manifest_path.unlink()
    manifest_path.mkdir()
    (tmp_path / "out-0.tar").unlink()
    broken = augment(inputs, outputs)
    assert broken.returncode == 1, broken.stderr
    assert "Traceback" not in broken.stderr
    assert statuses(broken) == ["written", "failed", "skipped"]
    lines = broken.stderr.strip().splitlines()
    assert len(lines) == 1 and "out-1.manifest.json" in lines[0] and "in-1.tar" in lines[0]


def test_a_compressed_output_name_is_skipped_by_its_stored_size(tmp_path: Path):
    source = good_shard(tmp_path / "in.tar", count=2)
    output = tmp_path / "out.tar.gz"
    assert statuses(augment(source, output)) == ["written"]
    assert statuses(augment(source, output)) == ["skipped"]
