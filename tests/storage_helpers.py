"""Running the real CLI against real storage, and the checks the storage and fault tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from shardflow.workflows.cli import main as shardflow_main

CLI = [sys.executable, "-m", "shardflow.workflows.cli"]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the machine's AWS_* and SHARDFLOW_* set-up, plus
    `extra`: each test states exactly how the worker reaches storage."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDFLOW_STORAGE"))}
    return {**base, **(extra or {})}


def shardflow(
    *args: str | os.PathLike,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`shardflow ARGS` in a subprocess, as a pod runs it."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(env),
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def start_shardflow(*args: str | os.PathLike, env: dict[str, str] | None = None):
    """`shardflow ARGS` started in the background (to be killed)."""
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(env),
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def assert_shard_failed(result: subprocess.CompletedProcess[str], shard: str, *words: str) -> str:
    """Exit 1, no traceback, and exactly one error line, naming the shard and each of `words`."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for word in (shard, *words):
        assert word in lines[0], lines[0]
    return lines[0]


def reference_shard(input_path: Path, directory: Path, *args: str) -> bytes:
    """The output of a plain local run (in-process): what every other run must reproduce."""
    output = directory / "reference" / input_path.name
    assert shardflow_main(["augment", str(input_path), str(output), "--quiet", *args]) == 0
    return output.read_bytes()


def verify(
    outputs: str,
    *args: str,
    inputs: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """`shardflow verify --json`: (exit status, report)."""
    extra = ("--inputs", inputs) if inputs else ()
    result = shardflow("verify", outputs, *extra, "--json", *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def verify_here(
    outputs: str, *, inputs: str | None = None, options: dict | None = None
) -> tuple[int, dict]:
    """`shardflow verify` in this process (no interpreter start-up), storage options explicit."""
    extra = ["--inputs", inputs] if inputs else []
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.json"
        storage = ["--storage-options", json.dumps(options or {})]
        code = shardflow_main(["verify", outputs, *extra, *storage, "-q", "--report", str(report)])
        return code, json.loads(report.read_text())


def statuses(report: dict) -> dict[str, str]:
    """Shard URL -> verify status."""
    return {shard["output"]: shard["status"] for shard in report["shards"]}


def files_under(directory: Path) -> list[str]:
    """Every file below `directory`, hidden temporaries included, relative and sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
