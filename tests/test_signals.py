"""SIGTERM (how Kubernetes stops a pod) and SIGINT sent to real processes in mid-shard: the
step cleans up as for Ctrl-C (no `.partial` file, no output, no open S3 multipart upload),
`run` stops and waits for its workers (none goes on publishing), and the message is true."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import Fault, S3Proxy, S3Server
from storage_helpers import files_under, start_shardflow

from helpers import good_shard


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def partial_files(directory: Path) -> list[str]:
    return [name for name in files_under(directory) if name.endswith(".partial")]


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (the test's own folder: its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":
            found.append(int(entry.name))
    return found


def copies_of(shard: Path, folder: Path, count: int) -> Path:
    """`folder`/in-0.tar ... in-COUNT-1.tar, each a hard link to `shard`."""
    folder.mkdir()
    for index in range(count):
        os.link(shard, folder / f"in-{index}.tar")
    return folder


@pytest.fixture(scope="module")
def slow_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard that takes a while with one thread, so a signal lands in mid-shard."""
    return good_shard(tmp_path_factory.mktemp("in") / "in.tar", count=120, width=640, height=480)


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 1), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_in_mid_shard_leaves_no_partial_file_and_no_output(
    slow_shard: Path, tmp_path: Path, signum: int, status: int
) -> None:
    out = tmp_path / "out"
    process = start_shardflow("augment", slow_shard, out / "out.tar", "--threads", "2")
    wait_for(lambda: bool(out.is_dir() and partial_files(out)), "the temporary file")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr, stderr
    assert "nothing partial was published" in stderr.splitlines()[-1], stderr
    assert files_under(out) == []


@pytest.mark.parametrize("to", ["step", "group"])
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 1), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_while_workers_write_whole_shards_leaves_nothing_partial(
    slow_shard: Path, tmp_path: Path, signum: int, status: int, to: str
) -> None:
    """Two shards, two worker processes: each worker writes a whole shard. The signal goes to
    the step alone (as the kubelet sends it), or to its whole process group (a terminal's
    Ctrl-C: the workers get it too, then the step's own stop); the workers remove their own
    temporary files, the step waits for them, and nothing prints a traceback."""
    inputs = copies_of(slow_shard, tmp_path / "in", 2)
    out = tmp_path / "out"
    process = start_shardflow(
        "augment", f"{inputs}/in-{{0..1}}.tar", f"{out}/out-{{0..1}}.tar", "--threads", "2",
        preexec_fn=os.setsid,
    )  # fmt: skip
    wait_for(lambda: bool(out.is_dir() and len(partial_files(out)) == 2), "both workers' files")
    if to == "group":
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr, stderr
    assert "nothing partial was published" in stderr.splitlines()[-1], stderr
    assert processes_mentioning(str(tmp_path)) == []
    assert files_under(out) == []


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def test_sigterm_during_an_s3_upload_aborts_it(s3: S3Server, slow_shard: Path) -> None:
    bucket = s3.new_bucket()
    output = f"s3://{bucket}/out.tar"
    with S3Proxy(s3.url) as proxy:
        hold = proxy.add_fault(Fault("hold", method="PUT", path=r"/out\.tar$", times=1))
        process = start_shardflow(
            "augment", slow_shard, output, "--storage-option", "default_block_size=5242880",
            env=s3.env(proxy.url),
        )  # fmt: skip
        try:
            wait_for(lambda: hold.held.is_set() or process.poll() is not None, "the upload")
            assert process.poll() is None, process.communicate()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        finally:
            hold.release.set()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "terminated (SIGTERM)" in stderr, stderr
    assert s3.keys(bucket) == []
    assert s3.pending_uploads(bucket) == []  # aborted, not left to a lifecycle rule


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 1), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_to_run_stops_its_workers_and_they_publish_nothing_partial(
    slow_shard: Path, tmp_path: Path, signum: int, status: int
) -> None:
    inputs = copies_of(slow_shard, tmp_path / "in", 3)
    out = tmp_path / "out"
    process = start_shardflow(
        "run", f"{inputs}/in-{{0..2}}.tar", f"{out}/out-{{0..2}}.tar", "--workers", "2",
        "--logs", tmp_path / "logs",
    )  # fmt: skip
    wait_for(lambda: bool(out.is_dir() and partial_files(out)), "a worker's temporary file")
    process.send_signal(signum)  # to `run` alone, as the kubelet or `kill` sends it
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == status, stderr
    assert "nothing partial was published" in stderr.splitlines()[-1], stderr
    assert processes_mentioning(str(tmp_path)) == []  # no orphaned worker goes on
    assert partial_files(out) == []
    time.sleep(1)  # a worker left running would publish in this time
    shards = [name for name in files_under(out) if name.endswith(".tar")]
    manifests = [name for name in files_under(out) if name.endswith(".manifest.json")]
    assert len(shards) == len(manifests) < 3


def test_the_handlers_are_restored_after_main_returns(tmp_path: Path) -> None:
    """main() also runs in-process (tests, embedding programs): it must not keep its handlers."""
    code = (
        "import signal, sys\n"
        "from shardflow.workflows.cli import main\n"
        "before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)\n"
        f"main(['synth', {str(tmp_path)!r}, '--shards', '1', '--samples', '1'])\n"
        "sys.exit(before != (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_signal_lost_in_a_finalizer_is_raised_again() -> None:
    """Python drops an exception raised in `__del__`; a handler that runs there loses the stop,
    and the step's per-sample check raises it again."""
    from shardflow.steps.signals import Terminated, raise_if_stopped, stop_signals_raise

    class SignalledWhileFinalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here, inside the finalizer

    with stop_signals_raise():
        SignalledWhileFinalized()
        with pytest.raises(Terminated):
            raise_if_stopped()
    raise_if_stopped()  # outside the block: nothing pending any more
