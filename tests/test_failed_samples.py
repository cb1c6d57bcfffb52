"""Failed samples cannot pass for success: a shard whose every sample failed is not published
and exits 3, a run failing more samples than --max-failed allows exits 3, and verify and
`shardflow run` report both as failures."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import good_shard, run_cli, sample_members, write_tar

# A recipe whose label path no sample has: every sample fails, as a --label-field typo does.
LABEL_TYPO = json.dumps(
    {
        "ops": [
            {"image": {}},
            {"label": {"path": "clss"}},
            {"encode": {"members": {"png": "image", "cls": "cls"}}},
        ]
    }
)


def one_bad_of_four(path: Path) -> Path:
    """Three good samples and one whose image is not a JPEG: 25% of the samples fail."""
    members = [member for i in range(3) for member in sample_members(f"good{i}", seed=i)]
    members += [("bad.jpg", b"not an image"), ("bad.json", b'{"cls": 1}')]
    return write_tar(path, members)


def test_a_label_field_typo_fails_the_shard_and_publishes_nothing(tmp_path: Path):
    source = good_shard(tmp_path / "in.tar", count=4)
    result = run_cli("augment", source, tmp_path / "out.tar", "--label-field", "clss")
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(source) in lines[0] and "key '0000000000000000'" in lines[0]
    assert "'clss'" in lines[0] and "all 4 samples" in lines[0]
    assert not (tmp_path / "out.tar").exists()
    assert not (tmp_path / "out.manifest.json").exists()


def test_more_failures_than_max_failed_fail_the_run_also_when_skipped(tmp_path: Path):
    source = one_bad_of_four(tmp_path / "in.tar")
    output = tmp_path / "out.tar"
    result = run_cli("augment", source, output)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "1 of 4 samples failed (25.0%), more than --max-failed 0.01" in result.stderr
    assert output.exists()  # the shard itself is whole; its manifest lists the failed key
    rerun = run_cli("augment", source, output, "--skip-existing")
    assert "skipped" in rerun.stdout
    assert rerun.returncode == 3, rerun.stderr  # skipping a shard does not forget its failures
    assert (
        run_cli("augment", source, output, "--skip-existing", "--max-failed", "30%").returncode == 0
    )

    verified = run_cli("verify", output)
    assert verified.returncode == 1, verified.stdout
    assert (
        verified.stdout.strip()
        .splitlines()[-1]
        .startswith("verify: FAILED: 1 of 4 samples failed (25.0%)")
    )
    assert run_cli("verify", output, "--max-failed", "0.3").returncode == 0
    bad = run_cli("verify", output, "--max-failed", "2")
    assert bad.returncode == 2 and "not between 0 and 1" in bad.stderr


def test_verify_fails_a_shard_whose_every_sample_failed(tmp_path: Path):
    """Such shards are no longer published, but older or foreign ones may exist."""
    write_tar(tmp_path / "empty.tar", [])
    output = tmp_path / "out.tar"
    assert run_cli("augment", tmp_path / "empty.tar", output).returncode == 0
    manifest_path = tmp_path / "out.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"] = {"read": 2, "written": 0, "dropped": 0, "failed": 2}
    manifest["failed"] = [{"key": k, "reason": "no member 'clss'"} for k in ("a", "b")]
    manifest_path.write_text(json.dumps(manifest))
    result = run_cli("verify", output, "--max-failed", "1")
    assert result.returncode == 1, result.stdout
    assert "every sample failed (2 of 2)" in result.stdout


def test_run_fails_when_every_sample_failed_or_too_many_did(tmp_path: Path):
    good_shard(tmp_path / "in" / "in-0.tar", count=3)
    good_shard(tmp_path / "in" / "in-1.tar", count=3)
    inputs = str(tmp_path / "in" / "in-{0..1}.tar")
    typo = run_cli("run", inputs, str(tmp_path / "typo") + "/", "--recipe", LABEL_TYPO)
    assert typo.returncode != 0, typo.stdout
    assert "verify: OK" not in typo.stdout
    assert "verify: FAILED: 2 of 2 shards did not pass (2 missing)" in typo.stdout

    one_bad_of_four(tmp_path / "mixed" / "in-0.tar")
    mixed = run_cli("run", str(tmp_path / "mixed" / "in-0.tar"), str(tmp_path / "out") + "/")
    assert mixed.returncode == 1, mixed.stdout
    assert "verify: FAILED: 1 of 4 samples failed" in mixed.stdout

    tolerant = run_cli(
        "run",
        str(tmp_path / "mixed" / "in-0.tar"),
        str(tmp_path / "out") + "/",
        "-p",
        "max-failed=30%",
    )  # the DAG parameter reaches both augment and verify
    assert tolerant.returncode == 0, tolerant.stdout + tolerant.stderr
    assert "verify: OK" in tolerant.stdout


def test_plan_refuses_a_bad_max_failed_before_any_task(tmp_path: Path):
    result = run_cli("plan", "in-{0..1}.tar", "out/", "--check-parameter", "max-failed=1.5")
    assert result.returncode == 2, result.stderr
    assert "max-failed='1.5' is not one of a fraction from 0 to 1" in result.stderr
