"""An input replaced while it is read is never stitched from two versions, and an input replaced
after its output was made is told apart: by a real HTTP server on 127.0.0.1 (with and without
If-Match support), moto's S3 server and local files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import Fault, FileServer, S3Proxy, S3Server
from storage_helpers import (
    assert_retryable,
    files_under,
    reference_shard,
    shardflow,
    start_shardflow,
    verify,
)

from shardflow.steps import storage
from shardflow.steps.errors import ShardError

from helpers import sample_members, write_tar

SMALL_HTTP_BLOCKS = 'http={"block_size": 4096}'  # many range requests for one small shard
SMALL_S3_BLOCKS = 's3={"default_block_size": 4096}'
HELD = 60  # seconds to wait for a held request


def shard_version(path: Path, last_class: int = 2) -> Path:
    """Six samples; versions differ only in the class of the last sample, so the same bytes
    up to its JSON member: a read stitched from two versions is a well-formed tar."""
    members = []
    for index in range(6):
        members += sample_members(f"{index:016x}", cls=index % 3, seed=index)
    name, _ = members[-1]
    members[-1] = (name, json.dumps({"cls": last_class}).encode())
    return write_tar(path, members)


def run_changing_input(
    args: list[str | Path],
    hold: Fault,
    change: Callable[[], None],
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `shardflow ARGS`; while the server holds the `hold` request (a range read after the
    first ones), replace the input with `change()`, then let the request go on."""
    process = start_shardflow(*args, env=env)
    try:
        assert hold.held.wait(HELD), process.communicate(timeout=HELD)
        change()
    finally:
        hold.release.set()
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    shard_version(root / "in.tar")
    return root


@pytest.mark.parametrize("conditional", [True, False], ids=["if-match", "if-match-ignored"])
def test_an_http_input_replaced_mid_read_fails_the_shard_and_publishes_nothing(
    site: Path, tmp_path: Path, conditional: bool
) -> None:
    """With If-Match honoured the server refuses the next range (412); a server that ignores
    it serves the new bytes, and the identity taken again after the read catches it."""
    out = tmp_path / "out"
    with FileServer(site, conditional=conditional) as web:
        url = f"{web.url}/in.tar"
        hold = web.add_fault(Fault("hold", method="GET", skip=2, times=1))
        args = ["augment", url, out / "out.tar", "--storage-option", SMALL_HTTP_BLOCKS]
        result = run_changing_input(args, hold, lambda: shard_version(site / "in.tar", 0))
        gets = web.requests("GET")
    words = ["412 Precondition Failed"] if conditional else ["etag"]
    assert_retryable(result, url, "input changed while being read", *words)
    assert files_under(out) == []
    etags = {request.headers.get("If-Match") for request in gets}
    assert len(etags) == 1 and None not in etags  # every range pinned to the first version


def test_an_http_input_read_whole_records_its_etag(site: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "out.tar"
    with FileServer(site) as web:
        result = shardflow(
            "augment", f"{web.url}/in.tar", output, "--storage-option", SMALL_HTTP_BLOCKS
        )
        etag = web.requests("GET")[0].headers["If-Match"]
    assert result.returncode == 0, result.stderr
    identity = json.loads(output.with_name("out.manifest.json").read_text())["input_identity"]
    assert identity == {"size": (site / "in.tar").stat().st_size, "etag": etag}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def test_an_s3_input_replaced_mid_read_fails_the_shard_and_publishes_nothing(
    s3: S3Server, tmp_path: Path
) -> None:
    """s3fs would reopen the replaced object after its 412 and read on from the new version."""
    bucket = s3.new_bucket()
    s3.put(bucket, "in.tar", shard_version(tmp_path / "v1.tar").read_bytes())
    replacement = shard_version(tmp_path / "v2.tar", 0).read_bytes()
    url = f"s3://{bucket}/in.tar"
    with S3Proxy(s3.url) as proxy:
        hold = proxy.add_fault(Fault("hold", method="GET", path=r"/in\.tar$", skip=2, times=1))
        # Small read blocks (s3fs refuses them for uploads: the output is local).
        args = ["augment", url, tmp_path / "out" / "out.tar", "--storage-option", SMALL_S3_BLOCKS]
        result = run_changing_input(
            args, hold, lambda: s3.put(bucket, "in.tar", replacement), env=s3.env(proxy.url)
        )
    assert_retryable(result, url, "input changed while being read", "ETag")
    assert files_under(tmp_path / "out") == []


def test_an_s3_input_records_its_etag(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    s3.put(bucket, "in.tar", shard_version(tmp_path / "v1.tar").read_bytes())
    result = shardflow("augment", f"s3://{bucket}/in.tar", tmp_path / "out.tar", env=s3.env())
    assert result.returncode == 0, result.stderr
    head = s3.client().head_object(Bucket=bucket, Key="in.tar")
    identity = json.loads((tmp_path / "out.manifest.json").read_text())["input_identity"]
    assert identity == {"size": head["ContentLength"], "etag": head["ETag"]}


def test_a_local_input_rewritten_while_read_is_caught_before_publishing(tmp_path: Path) -> None:
    path = shard_version(tmp_path / "in.tar")
    with storage.open_pinned_input(str(path), {}) as opened:
        first = opened.stream.read(4096)
        shard_version(path, 0)  # rewritten in place, as `cp new in.tar` does
        rest = opened.stream.read()
        with pytest.raises(ShardError, match=r"input changed while being read: .*mtime_ns"):
            opened.confirm_unchanged(str(path))
    assert first and rest  # the read itself went through: only the check can tell


def test_verify_and_skip_existing_tell_an_input_replaced_since_its_output_was_made(
    tmp_path: Path,
) -> None:
    source = shard_version(tmp_path / "in" / "in-000000.tar")
    inputs, outputs = f"{tmp_path}/in/in-{{000000..000000}}.tar", f"{tmp_path}/out/"
    expected = reference_shard(source, tmp_path)
    assert shardflow("augment", inputs, outputs, "--quiet").returncode == 0
    assert verify(f"{tmp_path}/out/in-000000.tar", inputs=inputs)[0] == 0
    unchanged = shardflow("augment", inputs, outputs, "--skip-existing", "--json")
    assert [s["status"] for s in json.loads(unchanged.stdout)["shards"]] == ["skipped"]

    shard_version(source, 0)
    code, report = verify(f"{tmp_path}/out/in-000000.tar", inputs=inputs)
    assert code == 1
    [problem] = report["shards"][0]["problems"]
    assert problem["kind"] == "changed" and "not the version" in problem["message"]

    redone = shardflow("augment", inputs, outputs, "--skip-existing", "--json")
    assert [s["status"] for s in json.loads(redone.stdout)["shards"]] == ["written"]
    assert (tmp_path / "out" / "in-000000.tar").read_bytes() != expected
    assert verify(f"{tmp_path}/out/in-000000.tar", inputs=inputs)[0] == 0


def test_a_manifest_without_an_input_identity_is_redone_and_a_deleted_input_reported(
    tmp_path: Path,
) -> None:
    """Skipping is only for what is known to be done: a manifest written before identities
    were recorded does not say which version it was made from."""
    source = shard_version(tmp_path / "in" / "in.tar")
    output = tmp_path / "out" / "in.tar"
    assert shardflow("augment", source, output, "--quiet").returncode == 0
    manifest = output.with_name("in.manifest.json")
    document = json.loads(manifest.read_text())
    del document["input_identity"]
    manifest.write_text(json.dumps(document))
    redone = shardflow("augment", source, output, "--skip-existing", "--json")
    assert [s["status"] for s in json.loads(redone.stdout)["shards"]] == ["written"]
    assert "input_identity" in json.loads(manifest.read_text())

    source.unlink()
    code, report = verify(str(output), inputs=str(source))
    assert code == 1
    [problem] = report["shards"][0]["problems"]
    assert problem == {"kind": "changed", "message": "changed: the input no longer exists"}
