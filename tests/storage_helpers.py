"""Running the real CLI against real storage, and the checks the storage and fault tests share."""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from pathlib import Path

from shardflow.workflows.cli import main as shardflow_main

from helpers import CLI, environment, run_cli

__all__ = ["CLI", "environment"]  # re-exported for the tests that build their own commands

# Storage tests state their whole environment: the one runner (helpers.run_cli), clean.
shardflow = functools.partial(run_cli, clean_env=True)
start_shardflow = functools.partial(run_cli, clean_env=True, background=True)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def assert_retryable(result: subprocess.CompletedProcess[str], shard: str, *words: str) -> str:
    """A shard failed for a reason a retry may fix (storage, network): exit 1, no traceback,
    and exactly one error line, naming the shard and each of `words`. (A damaged shard is
    test_bad_input's assert_rejected: exit 3, nothing published.)"""
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
