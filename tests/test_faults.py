"""Faults, each produced for real: S3 reads dropped, uploads failing, a worker killed with
kill -9 in its upload or between its shard and its manifest, two workers writing the same
shard at once, permission denied, a full disk. Nothing partial ever appears at an output,
errors are one line naming the shard, and a rerun redoes what was left unfinished."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time
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
    statuses,
    verify_here,
)

from helpers import good_shard

UPLOAD_PART = r"/out\.tar$"  # the shard's upload requests (parts and completion)
NO_BOTOCORE_RETRIES = {"AWS_MAX_ATTEMPTS": "1"}  # s3fs still retries; keeps the test short


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    with S3Proxy(s3.url) as server:
        yield server


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return good_shard(tmp_path / "in" / "in-000000.tar", count=6)


def s3_input(s3: S3Server, shard: Path) -> tuple[str, str]:
    """A fresh bucket holding the shard: (bucket, input URL)."""
    bucket = s3.new_bucket()
    s3.put(bucket, "in.tar", shard.read_bytes())
    return bucket, f"s3://{bucket}/in.tar"


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill_when_held(args: list[str], env: dict[str, str], hold: Fault) -> None:
    """Run `shardflow ARGS`, kill -9 it while the server holds its `hold` request, then let
    the server go on (it forwards nothing whose body the dead worker did not send)."""
    process = start_shardflow(*args, env=env)
    try:
        wait_for(lambda: hold.held.is_set() or process.poll() is not None, "the held request")
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        hold.release.set()
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL


def run_two_together(args: list, hold: Fault, env: dict[str, str] | None = None) -> None:
    """Two workers with the same ARGS; the server holds their `hold` requests until both are
    there and then lets both go at once. Both must succeed."""
    workers = [start_shardflow(*args, env=env) for _ in range(2)]
    try:
        wait_for(lambda: hold.hits == 2, "both workers at the held request")
    finally:
        hold.release.set()
    for worker in workers:
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr


def test_an_s3_read_dropped_once_is_resumed(
    s3: S3Server, proxy: S3Proxy, shard: Path, tmp_path: Path
) -> None:
    bucket, url = s3_input(s3, shard)
    proxy.add_fault(Fault("cut", method="GET", path=r"/in\.tar$", times=1, after=3000))
    result = shardflow("augment", url, f"s3://{bucket}/out.tar", env=s3.env(proxy.url))
    assert result.returncode == 0, result.stderr
    assert [r.fault for r in proxy.requests("GET", r"/in\.tar$")] == ["cut", None]
    assert s3.get(bucket, "out.tar") == reference_shard(shard, tmp_path)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", method="PUT", path=UPLOAD_PART, status=500),
        Fault("drop", method="PUT", path=UPLOAD_PART),
        Fault("status", method="PUT", path=UPLOAD_PART, status=403, code="AccessDenied"),
    ],
    ids=["server-error", "connection-dropped", "access-denied"],
)
def test_a_failed_upload_leaves_no_object_and_no_pending_upload(
    s3: S3Server, proxy: S3Proxy, shard: Path, fault: Fault
) -> None:
    bucket = s3.new_bucket()
    proxy.add_fault(fault)
    output = f"s3://{bucket}/out.tar"
    result = shardflow("augment", shard, output, env={**s3.env(proxy.url), **NO_BOTOCORE_RETRIES})
    assert_retryable(result, str(shard), f"cannot write {output}")
    assert fault.hits >= 1
    assert s3.keys(bucket) == []
    assert s3.pending_uploads(bucket) == []  # aborted, not left behind


def test_kill_9_during_the_upload_leaves_no_object_and_a_rerun_redoes_it(
    s3: S3Server, proxy: S3Proxy, shard: Path, tmp_path: Path
) -> None:
    bucket, url = s3_input(s3, shard)
    output = f"s3://{bucket}/out.tar"
    env = s3.env(proxy.url)
    hold = proxy.add_fault(Fault("hold", method="PUT", path=UPLOAD_PART, times=1))
    kill_when_held(["augment", url, output], env, hold)
    assert s3.keys(bucket) == ["in.tar"]
    # The unfinished multipart upload is invisible; a bucket lifecycle rule removes it.
    assert s3.pending_uploads(bucket) == ["out.tar"]

    rerun = shardflow("augment", url, output, "--skip-existing", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert s3.get(bucket, "out.tar") == reference_shard(shard, tmp_path)
    assert verify_here(output, inputs=url, options=s3.options())[0] == 0


def test_kill_9_between_shard_and_manifest_is_incomplete_and_redone(
    s3: S3Server, proxy: S3Proxy, shard: Path
) -> None:
    bucket, url = s3_input(s3, shard)
    output = f"s3://{bucket}/out.tar"
    env = s3.env(proxy.url)
    hold = proxy.add_fault(Fault("hold", method="PUT", path=r"/out\.manifest\.json$", times=1))
    kill_when_held(["augment", url, output], env, hold)
    assert s3.keys(bucket) == ["in.tar", "out.tar"]  # the shard, without its manifest
    code, report = verify_here(output, inputs=url, options=s3.options())
    assert (code, statuses(report)) == (1, {output: "incomplete"})

    rerun = shardflow("augment", url, output, "--skip-existing", "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert '"status": "written"' in rerun.stdout  # redone, not skipped
    assert verify_here(output, inputs=url, options=s3.options())[0] == 0


def test_two_workers_writing_one_s3_shard_at_once(
    s3: S3Server, proxy: S3Proxy, shard: Path, tmp_path: Path
) -> None:
    """A retried pod while the first still runs: both uploads are held until both have begun,
    then completed together; the shard is whole and its manifest agrees with it."""
    bucket, url = s3_input(s3, shard)
    output = f"s3://{bucket}/out.tar"
    env = s3.env(proxy.url)
    hold = proxy.add_fault(Fault("hold", method="PUT", path=UPLOAD_PART, times=2))
    run_two_together(["augment", url, output], hold, env)
    assert s3.get(bucket, "out.tar") == reference_shard(shard, tmp_path)
    assert verify_here(output, inputs=url, options=s3.options())[0] == 0


def test_two_workers_writing_one_local_shard_at_once(shard: Path, tmp_path: Path) -> None:
    """Both read through a server that holds their requests until both are there, so they
    decode, write and publish side by side."""
    big = good_shard(tmp_path / "site" / "big.tar", count=24)
    out = tmp_path / "out"
    with FileServer(big.parent) as web:
        hold = web.add_fault(Fault("hold", method="GET", times=2))
        run_two_together(["augment", f"{web.url}/big.tar", out / "big.tar", "--threads", "1"], hold)
        code, report = verify_here(f"{out}/big.tar", inputs=f"{web.url}/big.tar")
    assert code == 0, report
    assert (out / "big.tar").read_bytes() == reference_shard(big, tmp_path)
    assert files_under(out) == [  # no temporary left
        "big.manifest.json",
        "big.shardindex.json",
        "big.tar",
        "sizes.json",
    ]


def without_permission_override() -> None:
    """In the child: as root, give up the capabilities that ignore file modes, so the worker
    meets permissions as a non-root pod does (a non-root user already does)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for capability in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_on_a_local_input_and_output(shard: Path, tmp_path: Path) -> None:
    unreadable = tmp_path / "in" / "secret.tar"
    unreadable.write_bytes(shard.read_bytes())
    unreadable.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        reading = shardflow(
            "augment", unreadable, tmp_path / "out" / "a.tar",
            preexec_fn=without_permission_override,
        )  # fmt: skip
        writing = shardflow(
            "augment", shard, locked / "b.tar", preexec_fn=without_permission_override
        )
    finally:
        locked.chmod(0o755)
    assert_retryable(reading, str(unreadable), "permission denied")
    assert not (tmp_path / "out").exists()
    assert_retryable(writing, str(shard), f"cannot write {locked / 'b.tar'}", "Permission")
    assert files_under(locked) == []


def test_permission_denied_on_an_s3_input(s3: S3Server, proxy: S3Proxy, shard: Path) -> None:
    bucket, url = s3_input(s3, shard)
    proxy.add_fault(
        Fault("status", method="GET", path=r"/in\.tar$", status=403, code="AccessDenied")
    )
    result = shardflow("augment", url, f"s3://{bucket}/out.tar", env=s3.env(proxy.url))
    assert_retryable(result, url, "permission denied")
    assert s3.keys(bucket) == ["in.tar"]


def file_size_limit(limit: int) -> Callable[[], None]:
    """In the child: writes past `limit` bytes fail with EFBIG, as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_fails_the_shard_and_leaves_no_partial_file(
    shard: Path, tmp_path: Path
) -> None:
    size = len(reference_shard(shard, tmp_path))
    out = tmp_path / "out"
    result = shardflow("augment", shard, out / "out.tar", preexec_fn=file_size_limit(size // 2))
    assert_retryable(result, str(shard), f"cannot write {out / 'out.tar'}", "File too large")
    assert files_under(out) == []
