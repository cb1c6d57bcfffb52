"""Sizes an untrusted shard, recipe or pattern can ask for are bounded before anything is
allocated or read: geometric outputs, recipe sizes, zeros after the end of an archive, shard
patterns; and verifying shards that were never written costs a listing, not a request each."""

from __future__ import annotations

import gzip
import json
import random
import tarfile
from pathlib import Path

import braceexpand
import pytest
from servers import S3Proxy, S3Server
from storage_helpers import files_under, shardflow, statuses

from shardflow.steps.shard_patterns import PatternError, count_expansions

from helpers import good_shard, image_bytes, run_cli, write_tar


def test_a_resize_whose_output_exceeds_max_mpx_fails_the_sample_not_the_machine(
    tmp_path: Path,
) -> None:
    """A 1000x1 PNG passes --max-mpx 0.5; flip-crop's shorter side 256 would make it
    256000x256 = 65.5 Mpx (at the default limit and 65535x1, about 13 GB)."""
    shard = write_tar(
        tmp_path / "in.tar",
        [
            ("sliver.png", image_bytes(1000, 1, "PNG")),
            ("sliver.json", b'{"cls": 1}'),
            ("photo.jpg", image_bytes(320, 240)),
            ("photo.json", b'{"cls": 2}'),
        ],
    )
    out = tmp_path / "out.tar"
    result = run_cli(
        "augment", shard, out, "--recipe", "flip-crop", "--max-mpx", "0.5", "--max-failed", "1"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert [s["key"] for s in manifest["samples"]] == ["photo"]
    [failed] = manifest["failed"]
    assert failed["key"] == "sliver"
    assert "resize: the output would be 256000x256 = 65.5 Mpx" in failed["reason"]
    assert "--max-mpx" in failed["reason"]


@pytest.mark.parametrize(
    "op",
    [
        {"resize": {"width": 100000, "height": 100000}},
        {"resize": {"shorter": 10**9}},
        {"resize": {"longer": 70000}},
        {"center_crop": {"size": 10**12}},
        {"random_crop": {"width": 224, "height": 65536}},
    ],
)
def test_recipe_sizes_above_the_largest_image_side_are_usage_errors(
    tmp_path: Path, op: dict
) -> None:
    shard = write_tar(tmp_path / "in.tar", [("a.jpg", image_bytes())])
    recipe = {"ops": [{"image": {}}, op, {"encode": {"members": {"jpg": "image"}}}]}
    result = run_cli("augment", shard, tmp_path / "out.tar", "--recipe", json.dumps(recipe))
    assert result.returncode == 2, result.stderr
    assert "must be at most 65535" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_zeros_after_the_end_of_archive_are_read_up_to_a_bound(tmp_path: Path) -> None:
    """A shard followed by /dev/zero (a stream that never ends) fails the shard as trailing
    data, instead of being read forever."""
    shard = good_shard(tmp_path / "in.tar", count=2)
    result = run_cli(
        "augment", f"pipe:cat {shard} /dev/zero", tmp_path / "out" / "out.tar", "--allow-pipe",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # damaged data: not retried
    assert "trailing data" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_record_padding_after_the_end_of_archive_is_accepted(tmp_path: Path) -> None:
    """GNU tar pads to its blocking factor (`-b 2048`: 1 MiB records): still one archive."""
    shard = good_shard(tmp_path / "in.tar", count=2)
    padded = tmp_path / "padded.tar"
    padded.write_bytes(shard.read_bytes() + bytes(1 << 20))
    result = run_cli("augment", padded, tmp_path / "out.tar")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["augment", "verify", "plan"])
def test_a_pattern_naming_a_billion_shards_is_refused_before_expanding(
    tmp_path: Path, command: str
) -> None:
    pattern = f"{tmp_path}/in-{{000000000..999999999}}.tar"
    args = {
        "augment": ["augment", pattern, f"{tmp_path}/out/"],
        "verify": ["verify", pattern],
        "plan": ["plan", pattern, f"{tmp_path}/out/"],
    }[command]
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "names 1000000000 shards, more than the limit of 1000000" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_pattern_count_is_the_length_of_braceexpands_expansion() -> None:
    """Counted by braceexpand's own rules: ranges (padded, stepped, reversed, letters),
    sequences, nesting, escapes, unbalanced braces; seeded random patterns."""
    rng = random.Random(7)
    atoms = ["a", "{", "}", ",", "..", "0", "1", "9", "05", "-2", "\\", "Z", "..2"]
    for _ in range(3000):
        pattern = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 14)))
        try:
            expected: int | str = len(list(braceexpand.braceexpand(pattern)))
        except braceexpand.UnbalancedBracesError:
            expected = "unbalanced"
        try:
            counted: int | str = count_expansions(pattern)
        except PatternError:
            counted = "unbalanced"
        assert counted == expected, pattern


def test_verifying_missing_shards_lists_their_folder_instead_of_asking_per_shard() -> None:
    """200 shards never written, on S3 through a logging proxy: one listing, not two
    requests per shard (a million missing shards took minutes)."""
    with S3Server() as s3, S3Proxy(s3.url) as proxy:
        bucket = s3.new_bucket()
        s3.put(bucket, "out-0.tar", b"not a tar")
        result = shardflow(
            "verify", f"s3://{bucket}/out-{{0..199}}.tar", "--json", env=s3.env(proxy.url)
        )
        requests = proxy.requests()
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert statuses(report)[f"s3://{bucket}/out-0.tar"] == "incomplete"
    missing = [s for s in report["shards"] if s["status"] == "missing"]
    assert len(missing) == 199
    assert missing[0]["problems"][0]["message"].startswith("missing: no output shard")
    assert len(requests) < 20, [(r.method, r.path, r.query) for r in requests]


def test_a_tar_gz_output_is_gzip_compressed_reproducibly_and_verifies(tmp_path: Path) -> None:
    shard = good_shard(tmp_path / "in.tar", count=3)
    first, second = tmp_path / "a" / "out.tar.gz", tmp_path / "b" / "out.tar.gz"
    for output in (first, second):
        result = run_cli("augment", shard, output)
        assert result.returncode == 0, result.stderr
    data = first.read_bytes()
    assert data[:2] == b"\x1f\x8b" and data == second.read_bytes()
    with tarfile.open(first) as tar:  # what webdataset does with a .tar.gz
        assert len(tar.getnames()) == 6
    manifest = json.loads((tmp_path / "a" / "out.tar.gz.manifest.json").read_text())
    assert manifest["output_size"] == len(data)
    verified = run_cli("verify", first, "--inputs", shard)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_damaged_tar_gz_output_fails_verification(tmp_path: Path) -> None:
    shard = good_shard(tmp_path / "in.tar", count=3)
    output = tmp_path / "out.tar.gz"
    assert run_cli("augment", shard, output).returncode == 0
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0xFF
    output.write_bytes(bytes(data))
    result = run_cli("verify", output, "--json")
    assert result.returncode == 1, result.stderr
    [report] = json.loads(result.stdout)["shards"]
    assert report["status"] == "failed"


@pytest.mark.parametrize("name", ["out.tar.bz2", "out.tar.xz", "out.zip"])
def test_an_output_compression_that_is_not_written_is_a_usage_error(
    tmp_path: Path, name: str
) -> None:
    shard = good_shard(tmp_path / "in.tar", count=1)
    result = run_cli("augment", shard, tmp_path / name)
    assert result.returncode == 2, result.stderr
    assert "outputs are not supported; name the output .tar or .tar.gz" in result.stderr
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_a_bad_gzip_input_is_reported_as_the_input(tmp_path: Path, suffix: str) -> None:
    shard = good_shard(tmp_path / "in.tar", count=2)
    bad = tmp_path / f"in{suffix}"
    bad.write_bytes(gzip.compress(shard.read_bytes())[:-40] + b"garbage" * 3)
    result = run_cli("augment", bad, tmp_path / "out.tar")
    assert result.returncode == 3, result.stderr  # damaged data: not retried
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{bad}: cannot decompress the input" in lines[0]
    assert "cannot write" not in lines[0]


def test_a_tgz_input_is_decompressed(tmp_path: Path) -> None:
    shard = good_shard(tmp_path / "in.tar", count=2)
    tgz = tmp_path / "in.tgz"
    tgz.write_bytes(gzip.compress(shard.read_bytes()))
    result = run_cli("augment", tgz, tmp_path / "out.tar")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-mpx", "nan"], "--max-mpx must be a positive number, got nan"),
        (["--max-mpx", "inf"], "--max-mpx must be a positive number, got inf"),
        (["--max-member-mb", "inf"], "--max-member-mb must be a positive number, got inf"),
        (["--max-member-mb=nan"], "--max-member-mb must be a positive number, got nan"),
        (["--recipe", "foo://x.yaml"], "unknown URL scheme 'foo'"),
        (["--recipe", "{tmp}/folder.yaml"], "is a folder, not a file"),
    ],
)
def test_bad_limits_and_recipe_locations_are_one_line_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    shard = good_shard(tmp_path / "in.tar", count=1)
    (tmp_path / "folder.yaml").mkdir()
    result = run_cli(
        "augment", shard, tmp_path / "out.tar", *(a.format(tmp=tmp_path) for a in args)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_a_memory_output_is_refused_rather_than_vanishing(tmp_path: Path) -> None:
    shard = good_shard(tmp_path / "in.tar", count=1)
    result = run_cli("augment", shard, "memory://out/out.tar")
    assert result.returncode == 2, result.stderr
    assert "vanishes when it exits" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_home_relative_output_is_recorded_where_it_is_written(tmp_path: Path) -> None:
    """fsspec writes `~/out/x.tar` under $HOME; the manifest, verify and --skip-existing must
    name that place, not `./~/out/x.tar`."""
    shard = good_shard(tmp_path / "in.tar", count=2)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    result = run_cli("augment", shard, "~/out/x.tar", env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((home / "out" / "x.manifest.json").read_text())
    assert manifest["output"] == str(home / "out" / "x.tar")
    again = run_cli("augment", shard, "~/out/x.tar", "--skip-existing", env=env)
    assert "skipped" in again.stdout, again.stdout + again.stderr
    verified = run_cli("verify", "~/out/x.tar", "--inputs", shard, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
