"""s3:// inputs and outputs through s3fs against a real S3 server on 127.0.0.1 (moto), reached
the standard ways: AWS_* variables (AWS_ENDPOINT_URL included), --storage-option,
--storage-options; mixed with an http input that needs its own options."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import FileServer, S3Server
from storage_helpers import (
    assert_retryable,
    files_under,
    reference_shard,
    shardflow,
    statuses,
    verify,
)

from helpers import good_shard


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    return [good_shard(tmp_path / "in" / f"in-{i:06d}.tar", count=3 + i) for i in (0, 2)]


def test_a_batch_on_s3_with_the_standard_aws_variables(
    s3: S3Server, shards: list[Path], tmp_path: Path
) -> None:
    """Only AWS_ENDPOINT_URL and the credential variables: MinIO, Ceph or R2 work the same.
    Input 1 of 3 is missing: one error naming it, the others finish, verify reports it,
    and a rerun with --skip-existing skips the finished ones."""
    bucket = s3.new_bucket()
    for path in shards:
        s3.put(bucket, f"in/{path.name}", path.read_bytes())
    env = s3.env()
    inputs = f"s3://{bucket}/in/in-{{000000..000002}}.tar"
    outputs = f"s3://{bucket}/out/out-{{000000..000002}}.tar"

    result = shardflow("augment", inputs, outputs, env=env)
    assert_retryable(result, f"s3://{bucket}/in/in-000001.tar", "does not exist")
    assert [k for k in s3.keys(bucket) if k.startswith("out/")] == [
        "out/out-000000.manifest.json",
        "out/out-000000.tar",
        "out/out-000002.manifest.json",
        "out/out-000002.tar",
    ]
    for path, key in zip(shards, ("out/out-000000.tar", "out/out-000002.tar"), strict=True):
        assert s3.get(bucket, key) == reference_shard(path, tmp_path)

    code, report = verify(outputs, inputs=inputs, env=env)
    assert code == 1
    assert list(statuses(report).values()) == ["ok", "missing", "ok"]

    again = shardflow("augment", inputs, outputs, "--skip-existing", "--json", env=env)
    assert again.returncode == 1
    shard_status = [shard["status"] for shard in json.loads(again.stdout)["shards"]]
    assert shard_status == ["skipped", "failed", "skipped"]


def test_endpoint_and_credentials_as_storage_options(
    s3: S3Server, shards: list[Path], tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    expected = reference_shard(shards[0], tmp_path)
    flags = [f"--storage-option={key}={value}" for key, value in s3.options().items()]
    upload = shardflow("augment", shards[0], f"s3://{bucket}/a.tar", *flags)
    assert upload.returncode == 0, upload.stderr
    assert s3.get(bucket, "a.tar") == expected

    local = tmp_path / "local" / "b.tar"
    options = json.dumps(s3.options())
    download = shardflow(  # a recipe that applies to the output (png, cls; no json)
        "augment", f"s3://{bucket}/a.tar", local, "--storage-options", options,
        "--recipe", "flip-crop",
    )  # fmt: skip
    assert download.returncode == 0, download.stderr
    assert local.exists()

    # No credentials anywhere (and no instance metadata to ask): a clear failure, at once.
    anonymous = {"AWS_ENDPOINT_URL": s3.url, "AWS_EC2_METADATA_DISABLED": "true"}
    for source, target in ((shards[0], f"s3://{bucket}/c.tar"), (f"s3://{bucket}/a.tar", local)):
        refused = shardflow("augment", source, target, env=anonymous)
        assert_retryable(refused, str(source), "Unable to locate credentials")
        assert "attempts" not in refused.stderr
    assert s3.keys(bucket) == ["a.manifest.json", "a.shardindex.json", "a.tar", "sizes.json"]


def test_an_http_input_and_an_s3_output_each_take_their_own_options(
    s3: S3Server, shards: list[Path], tmp_path: Path
) -> None:
    token = {"Authorization": "Bearer t0ken"}
    bucket = s3.new_bucket()
    expected = reference_shard(shards[0], tmp_path)
    scoped = [
        "--storage-option",
        "http=" + json.dumps({"headers": token}),
        "--storage-option",
        "s3=" + json.dumps(s3.options()),
    ]
    with FileServer(shards[0].parent, required_headers=token) as web:
        url = f"{web.url}/{shards[0].name}"
        result = shardflow("augment", url, f"s3://{bucket}/out.tar", *scoped)
        # The same options unscoped reach both back-ends, and each rejects the other's.
        unscoped = shardflow(
            "augment",
            url,
            f"s3://{bucket}/unscoped.tar",
            "--storage-options",
            json.dumps({"headers": token, **s3.options()}),
        )
    assert result.returncode == 0, result.stderr
    assert s3.get(bucket, "out.tar") == expected
    assert_retryable(unscoped, url, "does not apply to http://", "--storage-option 'http={")
    assert s3.keys(bucket) == [
        "out.manifest.json",
        "out.shardindex.json",
        "out.tar",
        "sizes.json",
    ]


def test_local_outputs_of_s3_inputs_are_verified_against_s3_inputs(
    s3: S3Server, shards: list[Path], tmp_path: Path
) -> None:
    """verify reads manifests and shards wherever they are; --inputs may be on S3."""
    bucket = s3.new_bucket()
    s3.put(bucket, "in-000000.tar", shards[0].read_bytes())
    out = tmp_path / "out"
    result = shardflow("augment", f"s3://{bucket}/in-000000.tar", f"{out}/", env=s3.env())
    assert result.returncode == 0, result.stderr
    assert files_under(out) == [
        "in-000000.manifest.json",
        "in-000000.tar",
        "in.shardindex.json",
        "sizes.json",
    ]
    code, report = verify(
        f"{out}/in-000000.tar", inputs=f"s3://{bucket}/in-000000.tar", env=s3.env()
    )
    assert code == 0, report


def test_shardflow_run_on_s3_reports_a_missing_shard_and_a_rerun_completes(
    s3: S3Server, shards: list[Path]
) -> None:
    """The whole DAG run locally against S3: the missing input fails its task alone and verify
    reports it; once the input exists, a rerun redoes only that shard."""
    bucket = s3.new_bucket()
    s3.put(bucket, "in/in-000000.tar", shards[0].read_bytes())
    inputs, outputs = f"s3://{bucket}/in/in-{{000000..000001}}.tar", f"s3://{bucket}/out/"
    first = shardflow("run", inputs, outputs, "--quiet", env=s3.env())
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    assert f"s3://{bucket}/in/in-000001.tar: input shard does not exist" in first.stdout
    assert "missing: no output shard" in first.stdout
    assert "out/in-000000.tar" in s3.keys(bucket)

    s3.put(bucket, "in/in-000001.tar", shards[1].read_bytes())
    second = shardflow("run", inputs, outputs, env=s3.env())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 skipped" in second.stdout and "1 written" in second.stdout
    report = json.loads(s3.get(bucket, "out/verify-report.json"))
    assert report["passed"] is True
