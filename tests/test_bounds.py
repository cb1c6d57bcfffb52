"""Sizes an untrusted shard, recipe or pattern can ask for are bounded before anything is
allocated or read: geometric outputs, recipe sizes, zeros after the end of an archive, shard
patterns; and verifying shards that were never written costs a listing, not a request each."""

from __future__ import annotations

import json
import random
from pathlib import Path

import braceexpand
import pytest
from servers import S3Proxy, S3Server
from storage_helpers import files_under, shardflow, statuses

from shardflow.steps.shard_patterns import PatternError, count_expansions

from conftest import good_shard, image_bytes, run_cli, write_tar


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
    assert result.returncode == 1, result.stderr
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
