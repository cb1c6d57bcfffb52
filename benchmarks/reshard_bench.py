"""The reshard rows of `make bench`: `shardflow reshard` without a recipe beside a plain copy
of the same bytes, and a shuffled reshard against S3 on 127.0.0.1 with its request count.

    .venv/bin/python benchmarks/run.py --only reshard [--reshard-mb 400]

Inputs: the benchmark's photo shards (data.py; with --only reshard, `shardflow synth`'s
JPEGs, which need no bench extra) copied under new keys until they hold about --reshard-mb
MB, so a run takes seconds and start-up does not dominate. Rows, each a wall-clock median of
interleaved rounds on the same (cached) inputs:

- `cat`: `cat INPUTS > one file`, the bytes copied and nothing else (the floor);
- `cat + sync`: the same, then the file flushed to disk (reshard fsyncs each output and
  manifest before publishing it: the floor with the same durability);
- `tee + sha256sum + sync`: the bytes copied, hashed and flushed: the floor of the work a
  reshard must do (its manifests record each output's sha256, which verify checks);
- `reshard`: `shardflow reshard INPUTS OUT/%04d.tar --samples-per-shard 100` (count from
  headers, plan, write with hashing, manifests, atomic publish);
- `reshard --shuffle`: the same with a uniform shuffle (a ranged read per sample).

The S3 row (when moto is installed: the test extra) uploads a part of the inputs to moto's
server on 127.0.0.1 and reshards them there with --shuffle, reporting the read requests.
"""

from __future__ import annotations

import io
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARDFLOW = str(Path(sys.executable).with_name("shardflow"))
SAMPLES_PER_SHARD = "100"
S3_MB = 40
FOLDERS = {
    "cat": "cat",
    "cat + sync": "sync",
    "tee + sha256sum + sync": "hash",
    "reshard": "reshard",
    "reshard --shuffle": "shuffle",
}


def synthetic_shards(directory: Path) -> list[Path]:
    """`shardflow synth`'s shards (JPEGs 500-1024 px), for `--only reshard`."""
    existing = sorted(directory.glob("bench-*.tar"))
    if len(existing) == 4:
        return existing
    subprocess.run(
        [
            SHARDFLOW,
            "synth",
            str(directory),
            "--shards",
            "4",
            "--samples",
            "50",
            "--prefix",
            "bench",
        ],
        check=True,
        capture_output=True,
    )
    return sorted(directory.glob("bench-*.tar"))


def build_inputs(shards: list[Path], directory: Path, megabytes: float) -> list[Path]:
    """Copies of `shards` with new keys (`cNN-` before each) until `megabytes` are written."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob("in-*.tar"))
    if existing and sum(p.stat().st_size for p in existing) >= megabytes * 1e6:
        return existing
    written: list[Path] = []
    total = 0
    copy = 0
    while total < megabytes * 1e6:
        for source in shards:
            target = directory / f"in-{len(written):04d}.tar"
            with tarfile.open(source) as tar_in, tarfile.open(target, "w") as tar_out:
                for member in tar_in:
                    data = tar_in.extractfile(member).read()  # type: ignore[union-attr]
                    member.name = f"c{copy:02d}-{member.name}"
                    tar_out.addfile(member, io.BytesIO(data))
            written.append(target)
            total += target.stat().st_size
        copy += 1
    return written


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the command and its children, stdout)."""
    started, cpu = time.perf_counter(), _cpu()
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stderr}")
    return seconds, _cpu() - cpu, done.stdout


def local_rows(inputs: list[Path], work: Path, rounds: int) -> dict:
    pattern = str(inputs[0]).replace("0000", f"{{0000..{len(inputs) - 1:04d}}}")
    size = sum(p.stat().st_size for p in inputs)
    commands = {
        "cat": ["sh", "-c", f"cat {' '.join(map(str, inputs))} > {work}/cat/all.bin"],
        "cat + sync": [
            "sh", "-c", f"cat {' '.join(map(str, inputs))} > {work}/sync/all.bin && "
            f"sync {work}/sync/all.bin",
        ],
        "tee + sha256sum + sync": [
            "sh", "-c", f"cat {' '.join(map(str, inputs))} | tee {work}/hash/all.bin | sha256sum"
            f" && sync {work}/hash/all.bin",
        ],
        "reshard": [
            SHARDFLOW, "reshard", pattern, f"{work}/reshard/o-%04d.tar",
            "--samples-per-shard", SAMPLES_PER_SHARD, "--quiet",
        ],
        "reshard --shuffle": [
            SHARDFLOW, "reshard", pattern, f"{work}/shuffle/o-%04d.tar",
            "--samples-per-shard", SAMPLES_PER_SHARD, "--shuffle", "1", "--quiet",
        ],
    }  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for round_index in range(rounds):
        for name, command in commands.items():
            folder = work / FOLDERS[name]
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            wall, used, _ = _timed(command)
            seconds[name].append(wall)
            cpu[name].append(used)
            print(
                f"  round {round_index + 1}/{rounds} {name:18s} "
                f"{size / seconds[name][-1] / 1e6:7.1f} MB/s, {size / cpu[name][-1] / 1e6:7.1f} "
                "MB per CPU-s",
                file=sys.stderr,
            )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "bytes": size,
        "inputs": len(inputs),
        "rounds": rounds,
        "mb_per_s": {name: size / median / 1e6 for name, median in medians.items()},
        "mb_per_cpu_s": {name: size / median / 1e6 for name, median in cpu_medians.items()},
        "seconds": medians,
    }


def s3_row(inputs: list[Path], work: Path) -> dict | None:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    chosen: list[Path] = []
    for path in inputs:
        if sum(p.stat().st_size for p in chosen) >= S3_MB * 1e6:
            break
        chosen.append(path)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="bench")
        for index, path in enumerate(chosen):
            client.put_object(Bucket="bench", Key=f"in/in-{index:04d}.tar", Body=path.read_bytes())
        pattern = f"s3://bench/in/in-{{0000..{len(chosen) - 1:04d}}}.tar"
        seconds, _, stdout = _timed(
            [
                SHARDFLOW, "reshard", pattern, "s3://bench/out/o-%04d.tar",
                "--samples-per-shard", SAMPLES_PER_SHARD, "--shuffle", "1", "--json",
            ],
            env,
        )  # fmt: skip
    finally:
        server.stop()
    summary = json.loads(stdout)["summary"]
    size = sum(p.stat().st_size for p in chosen)
    return {
        "bytes": size,
        "inputs": len(chosen),
        "samples": summary["samples"],
        "read_requests": summary["read_requests"],
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6,
    }


def run(shards: list[Path], data_dir: Path, megabytes: float, rounds: int) -> dict:
    inputs = build_inputs(shards, data_dir / "reshard-in", megabytes)
    work = data_dir / "reshard-out"
    report = {"local": local_rows(inputs, work, rounds), "s3": s3_row(inputs, work)}
    shutil.rmtree(work, ignore_errors=True)
    return report


def markdown(report: dict) -> list[str]:
    local = report["local"]
    rates = local["mb_per_s"]
    per_cpu = local["mb_per_cpu_s"]
    lines = [
        "",
        f"Reshard without a recipe, local disk, {local['bytes'] / 1e6:.0f} MB in "
        f"{local['inputs']} shards ({SAMPLES_PER_SHARD} samples per output; wall-clock "
        f"medians of {local['rounds']} interleaved rounds, page cache warm):",
        "",
        "| command | MB/s (wall) | vs cat | vs cat + sync | MB per CPU-second | CPU vs cat "
        "| CPU vs tee + sha256sum |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(
            f"| {name} | {rate:.0f} | {rate / rates['cat']:.2f}x "
            f"| {rate / rates['cat + sync']:.2f}x | {per_cpu[name]:.0f} "
            f"| {per_cpu[name] / per_cpu['cat']:.2f}x "
            f"| {per_cpu[name] / per_cpu['tee + sha256sum + sync']:.2f}x |"
        )
    s3 = report.get("s3")
    if s3:
        lines += [
            "",
            f"Shuffled reshard on S3 (moto on 127.0.0.1): {s3['samples']} samples, "
            f"{s3['bytes'] / 1e6:.0f} MB from {s3['inputs']} shards in {s3['seconds']:.1f} s "
            f"({s3['mb_per_s']:.1f} MB/s) with {s3['read_requests']} ranged reads "
            f"({s3['read_requests'] / s3['samples']:.2f} a sample).",
        ]
    return lines
