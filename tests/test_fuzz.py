"""Fuzzing: seeded mutations of valid shards through augment, and of valid outputs through
verify, in worker processes bounded in time and watched for memory.

Properties: no traceback and no "unexpected" error (every failure is a clear one-line shard
error); no hang; peak memory bounded; every output either absent or passing verify; every
damaged output or manifest caught by verify, and every untouched one passing. `make test`
runs --fuzz-cases (default 200) of each; `make fuzz` runs 1,000 with a fresh seed, and any
case is replayed with `--fuzz-seed S` (see `Case.describe()` in a failure message).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz_shards import Case, base_shards, mutated_output, mutated_shard, regression_cases
from storage_helpers import CLI, environment

from shardflow.steps.samples import written_name_reason
from shardflow.workflows.cli import main as shardflow_main

CASES_PER_PROCESS = 100
SECONDS_PER_CASE = 1.0  # a hang is a process taking 20 s + this per case
PEAK_RSS_LIMIT_MB = 200  # measured: about 60 MB; a decoded 20000 x 20000 bomb is 1.2 GB
STEP_ARGS = ["--threads", "2", "--max-mpx", "4"]
# Alternate chunks: seed writes fixed extensions; flip-crop passes every other member through,
# so the (mutated) input names become the names written.
RECIPES = ("seed", "flip-crop")


@dataclass
class Run:
    """A finished worker process: exit status, output, peak memory."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    timed_out: bool


# The worker is started by a small Python process that reports its child's peak RSS. Measured
# from pytest directly (wait4's ru_maxrss), the figure would include pytest's own memory: exec
# keeps the high-water mark of the forked copy of the parent, which grows over a full run.
_MEASURED = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)


def run_bounded(args: list[str], directory: Path, timeout: float) -> Run:
    """`shardflow ARGS` with its peak RSS and a deadline after which it is killed."""
    out, err, peak = directory / "stdout", directory / "stderr", directory / "peak-rss-kb"
    peak.unlink(missing_ok=True)
    command = [sys.executable, "-c", _MEASURED, str(peak), *CLI, *args]
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, env=environment(), start_new_session=True
        )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        returncode = process.wait()
    finally:
        timer.cancel()
    peak_kb = int(peak.read_text()) if peak.exists() else 0
    return Run(returncode, out.read_text(), err.read_text(), peak_kb / 1024, killed.is_set())


def chunks(count: int) -> list[tuple[int, int]]:
    return [(a, min(a + CASES_PER_PROCESS, count) - 1) for a in range(0, count, CASES_PER_PROCESS)]


def pattern(directory: Path, first: int, last: int) -> str:
    return f"{directory}/case-{{{first:05d}..{last:05d}}}.tar"


def in_parallel(function, items: list) -> list:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(function, items))


def check_run(run: Run, what: str, cases: list[Case]) -> None:
    described = "\n".join(case.describe() for case in cases)
    assert not run.timed_out, f"{what} hung on one of:\n{described}"
    # augment: 3 when every failed shard is damaged, 1 when some failure may pass on a retry;
    # verify: 1 when a shard fails verification. Anything else is a crash.
    allowed = (0, 1, 3) if what == "augment" else (0, 1)
    assert run.returncode in allowed, f"{what}: exit {run.returncode}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, f"{what}:\n{run.stderr[-5000:]}"
    assert run.peak_rss_mb < PEAK_RSS_LIMIT_MB, f"{what}: peak RSS {run.peak_rss_mb:.0f} MB"


@pytest.fixture
def fuzz(request: pytest.FixtureRequest) -> tuple[int, int]:
    """(cases, seed) from --fuzz-cases and --fuzz-seed."""
    return request.config.getoption("--fuzz-cases"), request.config.getoption("--fuzz-seed")


def test_augment_on_mutated_shards_fails_cleanly_or_writes_a_valid_shard(
    fuzz: tuple[int, int], tmp_path: Path
) -> None:
    count, seed = fuzz
    bases = base_shards()
    cases = [mutated_shard(seed, number, bases) for number in range(count)]
    cases += regression_cases(len(cases))
    count = len(cases)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in cases:
        (inputs / f"case-{case.number:05d}.tar").write_bytes(case.data)

    def augment_and_verify(span: tuple[int, int]) -> tuple[Run, Run]:
        work = tmp_path / f"work-{span[0]}"
        work.mkdir()
        first, last = span
        timeout = 20 + SECONDS_PER_CASE * (last - first + 1)
        sources, targets = pattern(inputs, first, last), pattern(outputs, first, last)
        recipe = RECIPES[first // CASES_PER_PROCESS % len(RECIPES)]
        step = ["augment", sources, targets, "--json", "--recipe", recipe, *STEP_ARGS]
        augmented = run_bounded(step, work, timeout)
        verify_args = ["verify", targets, "--inputs", sources, "--json"]
        verified = run_bounded(verify_args, work, timeout)
        return augmented, verified

    written = 0
    for span, (augmented, verified) in zip(
        chunks(count), in_parallel(augment_and_verify, chunks(count)), strict=True
    ):
        span_cases = cases[span[0] : span[1] + 1]
        check_run(augmented, "augment", span_cases)
        check_run(verified, "verify", span_cases)
        results = json.loads(augmented.stdout)["shards"]
        checked = {shard["output"]: shard for shard in json.loads(verified.stdout)["shards"]}
        for case, result in zip(span_cases, results, strict=True):
            about = f"{case.describe()}\n{result}"
            assert result["status"] in ("written", "failed"), about
            report = checked[result["output"]]
            if result["status"] == "written":
                written += 1
                assert report["status"] == "ok", f"{about}\nverify: {report}"
                with tarfile.open(result["output"]) as tar:
                    unsafe = [n for n in tar.getnames() if written_name_reason(n) is not None]
                assert not unsafe, f"{about}\nunsafe member names written: {unsafe}"
            else:
                error = result["error"]
                assert "\n" not in error and result["input"] in error, about
                assert "unexpected" not in error, about  # an exception nobody anticipated
                assert report["status"] == "missing", f"{about}\nverify: {report}"
                assert not list(outputs.glob(f".case-{case.number:05d}*")), about
    assert written, "no case was written: the base shards or the controls are broken"


def test_verify_catches_every_damaged_output_and_passes_the_untouched(
    fuzz: tuple[int, int], tmp_path: Path
) -> None:
    count, seed = fuzz
    inputs, outputs, made = tmp_path / "in", tmp_path / "out", tmp_path / "made"
    inputs.mkdir()
    outputs.mkdir()
    originals = []
    for index, shard in enumerate(base_shards()):
        source = inputs / f"base-{index}.tar"
        source.write_bytes(shard)
        target = made / f"base-{index}.tar"
        assert shardflow_main(["augment", str(source), str(target), "--quiet"]) == 0
        manifest = target.with_name(f"base-{index}.manifest.json")
        originals.append((target.read_bytes(), manifest.read_bytes()))

    cases = []
    for number in range(count):
        shard, manifest = originals[number % len(originals)]
        name = f"case-{number:05d}"
        # copy2 keeps the modification time: the same version of the input as the manifest's.
        shutil.copy2(inputs / f"base-{number % len(originals)}.tar", inputs / f"{name}.tar")
        document = json.loads(manifest)  # the manifest of this very pair of URLs
        document["input"], document["output"] = (
            str(inputs / f"{name}.tar"),
            str(outputs / f"{name}.tar"),
        )
        manifest = json.dumps(document).encode()
        case, damaged_manifest = mutated_output(seed, number, shard, manifest)
        (outputs / f"{name}.tar").write_bytes(case.data)
        (outputs / f"{name}.manifest.json").write_bytes(damaged_manifest)
        untouched = case.data == shard and damaged_manifest == manifest
        cases.append((case, untouched))

    def verify(span: tuple[int, int]) -> Run:
        work = tmp_path / f"work-{span[0]}"
        work.mkdir()
        timeout = 20 + SECONDS_PER_CASE * (span[1] - span[0] + 1)
        sources, targets = pattern(inputs, *span), pattern(outputs, *span)
        return run_bounded(["verify", targets, "--inputs", sources, "--json"], work, timeout)

    controls = 0
    for span, run in zip(chunks(count), in_parallel(verify, chunks(count)), strict=True):
        span_cases = cases[span[0] : span[1] + 1]
        check_run(run, "verify", [case for case, _ in span_cases])
        reports = json.loads(run.stdout)["shards"]
        for (case, untouched), report in zip(span_cases, reports, strict=True):
            about = f"{case.describe()}\nverify: {report}"
            if untouched:
                controls += 1
                assert report["status"] == "ok", about
            else:
                assert report["status"] != "ok" and report["problems"], about
    assert controls, "no untouched control case: raise --fuzz-cases"
