"""`shardflow verify` end to end: real output shards written by the real augment step, each
damage done for real to a copy of them, each caught with its precise message and exit code."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from shardflow.steps.contact_sheet import CAPTION, LABEL, PAD, TILE, tile_box
from shardflow.steps.tar_reader import BLOCK, TarMember, TarReader
from shardflow.steps.tar_writer import TarWriter

from helpers import good_shard, run_cli

SHARDS = 3
SAMPLES = 4
LAST = f"{SHARDS - 1:06d}"


@pytest.fixture(scope="module")
def augmented(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """in/in-00000{0,1,2}.tar and, made by `shardflow augment`, out/out-*.tar + manifests."""
    root = tmp_path_factory.mktemp("verify")
    for index in range(SHARDS):
        good_shard(root / "in" / f"in-{index:06d}.tar", count=SAMPLES, width=40 + 8 * index)
    done = run_cli(
        "augment",
        root / "in" / f"in-{{000000..{LAST}}}.tar",
        root / "out" / f"out-{{000000..{LAST}}}.tar",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def shards(augmented: Path, tmp_path: Path) -> Path:
    """A private copy of the outputs (to damage); the manifests still name the real inputs."""
    shutil.copytree(augmented / "out", tmp_path / "out")
    return tmp_path / "out"


def outputs(directory: Path) -> str:
    return str(directory / f"out-{{000000..{LAST}}}.tar")


def inputs(augmented: Path) -> str:
    return str(augmented / "in" / f"in-{{000000..{LAST}}}.tar")


def members(path: Path) -> list[TarMember]:
    with open(path, "rb") as stream:
        return list(TarReader(stream))


def rewrite(path: Path, change: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]):
    """Rewrite the shard with the deterministic writer the augment step uses."""
    with tarfile.open(path) as tar:
        content = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with open(path, "wb") as stream:
        writer = TarWriter(stream)
        for name, data in change(content):
            writer.add(name, data)
        writer.close()


def verify(*args, env=None):
    return run_cli("verify", *map(str, args), env=env)


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


def table_row(stdout: str, shard: Path) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(str(shard) + " "))


def test_a_clean_set_passes_with_table_report_and_summary(
    augmented: Path, shards: Path, tmp_path: Path
):
    report, summary = tmp_path / "r" / "report.json", tmp_path / "summary.txt"
    done = verify(
        outputs(shards),
        "--inputs",
        inputs(augmented),
        "--report",
        report,
        "--summary-file",
        summary,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for index in range(SHARDS):
        row = table_row(done.stdout, shards / f"out-{index:06d}.tar").split()
        assert row[1:3] == [str(SAMPLES), str(2 * SAMPLES)]
        assert row[-1] == "ok"
    line = last_line(done.stdout)
    assert line.startswith(f"verify: OK: {SHARDS} of {SHARDS} shards passed; {SHARDS * SAMPLES} ")
    assert summary.read_text() == line + "\n"

    document = json.loads(report.read_text())
    assert document["format"] == "shardflow.verify/1"
    assert document["passed"] is True
    assert document["summary"]["line"] == line
    assert document["summary"]["status"] == {"ok": 3, "failed": 0, "incomplete": 0, "missing": 0}
    assert document["summary"]["samples"] == SHARDS * SAMPLES
    for index, entry in enumerate(document["shards"]):
        output = shards / f"out-{index:06d}.tar"
        manifest = json.loads(output.with_suffix(".manifest.json").read_text())
        assert entry["output"] == str(output)
        assert entry["input"] == str(augmented / "in" / f"in-{index:06d}.tar")
        assert entry["manifest_input"] == manifest["input"]
        assert entry["bytes"] == output.stat().st_size == manifest["output_size"]
        assert entry["sha256"] == manifest["output_sha256"]
        assert (entry["status"], entry["problems"]) == ("ok", [])


def test_json_mode_prints_the_report_and_progress_file_reaches_the_total(
    shards: Path, tmp_path: Path
):
    progress = tmp_path / "progress"
    done = verify(outputs(shards), "--json", env={"ARGO_PROGRESS_FILE": str(progress)})
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [entry["status"] for entry in document["shards"]] == ["ok"] * SHARDS
    assert document["inputs"] is None
    assert progress.read_text() == f"{SHARDS * 100}/{SHARDS * 100}"


def _truncate_at_boundary(shard: Path) -> str:
    listed = members(shard)
    os.truncate(shard, listed[2].offset)
    return (
        "truncated: archive ends without its end-of-archive blocks after "
        f"{listed[1].name!r}: it was truncated (at a member boundary)"
    )


def _truncate_mid_member(shard: Path) -> str:
    member = members(shard)[2]
    os.truncate(shard, member.offset + BLOCK + member.size // 2)
    return (
        f"truncated: archive is truncated inside the data of {member.name!r} "
        f"({member.size // 2} of {member.size} bytes present)"
    )


def _drop_end_of_archive(shard: Path) -> str:
    last = members(shard)[-1]
    os.truncate(shard, last.offset + BLOCK + last.size + (-last.size % BLOCK))
    return (
        "truncated: every member is present but the end-of-archive blocks after "
        f"{last.name!r} are missing"
    )


def _flip_header_byte(shard: Path) -> str:
    listed = members(shard)
    data = bytearray(shard.read_bytes())
    data[listed[4].offset + 3] ^= 0x20  # a letter of the member's name: the checksum fails
    shard.write_bytes(bytes(data))
    return (
        f"corrupt: corrupt tar header at byte {listed[4].offset} after {listed[3].name!r}: "
        "bad checksum"
    )


def _delete_manifest(shard: Path) -> str:
    shard.with_suffix(".manifest.json").unlink()
    return "no manifest: the shard is incomplete"


def _add_member(shard: Path) -> str:
    key = members(shard)[0].name.split(".")[0]
    rewrite(shard, lambda content: [*content[:2], (f"{key}.json", b"{}"), *content[2:]])
    return f"member list differs from the manifest: unexpected '{key}.json'"


def _remove_member(shard: Path) -> str:
    name = members(shard)[3].name
    rewrite(shard, lambda content: [m for m in content if m[0] != name])
    return f"member list differs from the manifest: missing {name!r}"


def _duplicate_key(shard: Path) -> str:
    first = members(shard)[0].name
    rewrite(shard, lambda content: [*content, *content[:2]])
    key = first.split(".")[0]
    return f"duplicate key {key!r}: member {first!r} repeats it after other samples"


def _delete_shard(shard: Path) -> str:
    shard.unlink()
    return "missing: no output shard at this URL (but its manifest exists)"


DAMAGES = {
    "truncated at a member boundary": (_truncate_at_boundary, "failed"),
    "truncated mid-member": (_truncate_mid_member, "failed"),
    "end-of-archive blocks dropped": (_drop_end_of_archive, "failed"),
    "a header byte flipped": (_flip_header_byte, "failed"),
    "manifest deleted": (_delete_manifest, "incomplete"),
    "a member added": (_add_member, "failed"),
    "a member removed": (_remove_member, "failed"),
    "a key duplicated": (_duplicate_key, "failed"),
    "the output missing": (_delete_shard, "missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_damage_is_caught_precisely(damage: str, shards: Path, tmp_path: Path):
    damage_shard, status = DAMAGES[damage]
    shard = shards / "out-000001.tar"
    expected = damage_shard(shard)
    report = tmp_path / "report.json"
    done = verify(outputs(shards), "--report", report)
    assert done.returncode == 1, done.stdout + done.stderr
    row = table_row(done.stdout, shard)
    assert f"  {status}  {expected}" in row
    for other in ("out-000000.tar", "out-000002.tar"):
        assert table_row(done.stdout, shards / other).endswith("  ok")
    assert last_line(done.stdout).startswith(
        f"verify: FAILED: 1 of {SHARDS} shards did not pass (1 {status}); 2 passed"
    )
    assert last_line(done.stdout).endswith(f"; not passing: {shard}")
    entry = json.loads(report.read_text())["shards"][1]
    assert entry["status"] == status
    assert entry["problems"][0]["message"] == expected


def test_damage_changes_size_and_sha256_and_sample_count(shards: Path):
    shard = shards / "out-000000.tar"
    _truncate_at_boundary(shard)
    done = verify(outputs(shards), "--json")
    problems = [p["message"] for p in json.loads(done.stdout)["shards"][0]["problems"]]
    manifest = json.loads(shard.with_suffix(".manifest.json").read_text())
    assert (
        f"size {shard.stat().st_size} bytes differs from the manifest's {manifest['output_size']}"
    ) in problems
    assert "sha256 differs from the manifest" in problems
    assert f"1 samples in the archive, but the manifest counts {SAMPLES} written" in problems


def test_same_size_different_bytes_is_caught_by_sha256(shards: Path):
    shard = shards / "out-000002.tar"
    member = members(shard)[0]
    data = bytearray(shard.read_bytes())
    data[member.offset + BLOCK + 100] ^= 0xFF  # inside PNG data: the tar is still well formed
    shard.write_bytes(bytes(data))
    done = verify(outputs(shards), "--json")
    assert done.returncode == 1
    entry = json.loads(done.stdout)["shards"][2]
    assert [p["message"] for p in entry["problems"]] == ["sha256 differs from the manifest"]


def test_expect_overrides_the_manifest(shards: Path):
    done = verify(outputs(shards), "--expect", "png")
    assert done.returncode == 1
    assert f"{SAMPLES} of {SAMPLES} samples do not have exactly the members png: " in done.stdout
    assert verify(outputs(shards), "--expect", "cls,PNG").returncode == 0


def test_inputs_swapped_are_reported_on_both_outputs(augmented: Path, shards: Path):
    first, second = (str(augmented / "in" / f"in-{i:06d}.tar") for i in (0, 1))
    swapped = str(augmented / "in" / "in-{000001,000000,000002}.tar")
    done = verify(outputs(shards), "--inputs", swapped, "--json")
    assert done.returncode == 1
    entries = json.loads(done.stdout)["shards"]
    assert entries[0]["problems"] == [
        {"kind": "input", "message": f"made from {first!r}, not from its paired input {second!r}"}
    ]
    assert entries[1]["problems"][0]["kind"] == "input"
    assert entries[2]["status"] == "ok"


def test_outputs_of_other_inputs_are_extra(augmented: Path, shards: Path, tmp_path: Path):
    shutil.copytree(augmented / "in", tmp_path / "other")
    done = verify(outputs(shards), "--inputs", tmp_path / f"other/in-{{000000..{LAST}}}.tar")
    assert done.returncode == 1
    source = augmented / "in" / "in-000000.tar"
    assert f"failed  extra: made from '{source}', which is not one of the inputs" in (
        table_row(done.stdout, shards / "out-000000.tar")
    )


def test_two_outputs_from_one_input(augmented: Path, shards: Path):
    for suffix in (".tar", ".manifest.json"):
        shutil.copy(shards / f"out-000000{suffix}", shards / f"out-000001{suffix}")
    done = verify(outputs(shards), "--inputs", inputs(augmented), "--json")
    assert done.returncode == 1
    entries = json.loads(done.stdout)["shards"]
    source = str(augmented / "in" / "in-000000.tar")
    duplicate = (
        f"{source!r} is the input of 2 outputs: "
        f"'{shards / 'out-000000.tar'}', '{shards / 'out-000001.tar'}'"
    )
    assert [p["message"] for p in entries[0]["problems"]] == [duplicate]
    assert [p["kind"] for p in entries[1]["problems"]] == ["input", "duplicate"]


def test_missing_output_names_its_input(augmented: Path, shards: Path):
    for suffix in (".tar", ".manifest.json"):
        (shards / f"out-000002{suffix}").unlink()
    done = verify(outputs(shards), "--inputs", inputs(augmented))
    assert done.returncode == 1
    source = augmented / "in" / "in-000002.tar"
    assert table_row(done.stdout, shards / "out-000002.tar").endswith(
        f"  missing  missing: no output shard for input '{source}'"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--inputs", "in-{000000..000005}.tar"], "6 input shards but 3 output shards"),
        (["--expect", "png,,cls"], "--expect 'png,,cls' is not a comma-separated list"),
        (["--report", "https://example.com/r.json"], "https:// is read-only"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    shards: Path, tmp_path: Path, arguments: list[str], message: str
):
    progress = tmp_path / "progress"
    done = verify(outputs(shards), *arguments, env={"ARGO_PROGRESS_FILE": str(progress)})
    assert done.returncode == 2
    assert message in done.stderr
    assert not progress.exists()


def test_quiet_prints_only_problems(shards: Path):
    _delete_manifest(shards / "out-000000.tar")
    done = verify(outputs(shards), "--quiet")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"shardflow verify: {shards / 'out-000000.tar'}: no manifest: the shard is incomplete"
    )


def test_sample_sheet_shows_the_first_samples_of_spread_shards(shards: Path, tmp_path: Path):
    sheet_path = tmp_path / "sheet" / "sheet.png"
    done = verify(
        outputs(shards), "--sample-sheet", sheet_path, "--sheet-shards", 2, "--sheet-samples", 3
    )
    assert done.returncode == 0, done.stderr
    assert f"sample sheet: {sheet_path} (6 samples)" in done.stdout
    sheet = Image.open(sheet_path)
    assert sheet.format == "PNG"
    columns, rows = 3, 2
    assert sheet.size == (
        PAD + columns * (TILE + PAD),
        PAD + rows * (CAPTION + TILE + LABEL + PAD),
    )
    for row in range(rows):
        for column in range(columns):
            colours = sheet.crop(tile_box(row, column)).getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 50  # a picture, not an empty cell
