"""`make bench`: every pipeline side by side, in one run, on the same shards; prints the table.

    .venv/bin/python benchmarks/run.py [--rounds 3] [--samples 64] [--big-gb 2]
    .venv/bin/python benchmarks/run.py --only reshard   # the reshard rows alone
    .venv/bin/python benchmarks/run.py --only train-224 --rounds 5   # its rows and accuracy

Each measurement runs in its own process (so peak RSS is that pipeline's own), and the rounds
interleave the pipelines (so a neighbour's load on this shared machine falls on all of them
alike); medians are reported. "Per core" is samples per CPU-second of the process (user +
system), which a neighbour's load hardly moves; wall-clock figures are given beside it.
Results go to stdout and to benchmarks/results/ (latest.md, latest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import accuracy
import data
import reshard_bench

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
SHARDFLOW = str(Path(PYTHON).with_name("shardflow"))
PER_CORE = [
    "docs",
    "seed",
    "seed-fpng",
    "seed-pillow",
    "floor",
    "floor-fpng",
    "train-224",
    "train-224-numpy",
    "train-224-box",
    "train-224-bicubic",
    "train-224-floor",
    "img2dataset",
]
TRAIN_224 = [name for name in PER_CORE if name.startswith(("train-224", "img2dataset"))]
SCALED = ["seed", "seed-procs", "seed-fpng-procs", "train-224", "floor"]
SEED_PROCESSES = "seed, N processes"
ONE_SHARD = ["seed-procs", "seed-fpng-procs"]


def scaled_rows() -> list[str]:
    return [*SCALED, SEED_PROCESSES, *(f"{name}, one shard" for name in ONE_SHARD)]


def _command(name: str, inputs: list[Path], out_dir: Path, threads: int) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [out_dir / path.name for path in inputs]
    command = [PYTHON, str(HERE / "pipelines.py"), name, "--threads", str(threads)]
    return [*command, "--inputs", *map(str, inputs), "--outputs", *map(str, outputs)]


def _result(name: str, stdout: str, stderr: str, returncode: int) -> dict:
    if returncode != 0:
        raise SystemExit(f"pipeline {name} failed:\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_pipeline(name: str, inputs: list[Path], out_dir: Path, threads: int) -> dict:
    command = _command(name, inputs, out_dir, threads)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return _result(name, done.stdout, done.stderr, done.returncode)


def run_processes(name: str, shards: list[Path], out_dir: Path, processes: int) -> dict:
    """`processes` one-thread copies of a pipeline at once, each on its share of the shards:
    the same work with no GIL to share, to tell the GIL's cost from the machine's limits."""
    running = [
        subprocess.Popen(
            _command(name, shards[index::processes], out_dir, 1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    results = []
    for process in running:
        stdout, stderr = process.communicate()
        results.append(_result(name, stdout, stderr, process.returncode))
    return {
        "samples": sum(r["samples"] for r in results),
        "seconds": max(r["seconds"] for r in results),
    }


def summarise(runs: list[dict]) -> dict:
    """Medians over rounds of one pipeline's runs."""
    first = runs[0]
    return {
        "name": first["name"],
        "threads": first["threads"],
        "samples": first["samples"],
        "per_core": statistics.median(r["samples"] / r["cpu_seconds"] for r in runs),
        "wall": statistics.median(r["samples"] / r["seconds"] for r in runs),
        "mb_in_per_s": statistics.median(r["bytes_in"] / r["seconds"] / 1e6 for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "faults_per_sample": statistics.median(r["minor_faults"] / r["samples"] for r in runs),
        "system_share": statistics.median(r["system_seconds"] / r["cpu_seconds"] for r in runs),
        "out_per_sample": first["bytes_out"] / first["samples"],
        "in_per_sample": first["bytes_in"] / first["samples"],
        "rounds": len(runs),
        "each_round": [r["samples"] / r["cpu_seconds"] for r in runs],
    }


def per_core(
    shards: list[Path], work: Path, rounds: int, names: list[str] = PER_CORE
) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names:
            result = run_pipeline(name, shards, work / name, threads=1)
            runs[name].append(result)
            print(
                f"  round {round_index + 1}/{rounds} {name:12s} "
                f"{result['samples'] / result['cpu_seconds']:7.1f} samples/CPU-s",
                file=sys.stderr,
            )
    return {name: summarise(results) for name, results in runs.items()}


def train_224_markdown(rows: dict[str, dict], accuracy_rows: dict[str, dict]) -> list[str]:
    """The train-224 rows against the img2dataset-style pipeline, and their accuracy."""
    i2d = rows["img2dataset"]["per_core"]
    lines = [
        "| pipeline | samples/s per core (median) | each round | vs img2dataset-style |",
        "|---|---:|---|---:|",
    ]
    for name, row in rows.items():
        each = ", ".join(f"{value:.1f}" for value in row["each_round"])
        lines.append(f"| {name} | {row['per_core']:.1f} | {each} | {row['per_core'] / i2d:.2f}x |")
    return lines + accuracy.markdown(accuracy_rows)


def compare_pixels(shards: list[Path], work: Path) -> dict:
    """Decode every PNG the docs recipe wrote and compare it with the seed recipe's, with
    ISA-L (seed) and with fpng (seed-fpng)."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    def pngs(path: Path) -> dict[str, np.ndarray]:
        with tarfile.open(path) as tar:
            return {
                m.name: np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))
                for m in tar
                if m.name.endswith(".png")
            }

    same = total = 0
    worst = 0
    for shard in shards:
        docs = pngs(work / "docs" / shard.name)
        for pipeline in ("seed", "seed-fpng"):
            seed = pngs(work / pipeline / shard.name)
            assert docs.keys() == seed.keys(), "the two recipes wrote different samples"
            for name, pixels in docs.items():
                total += 1
                same += bool(np.array_equal(pixels, seed[name]))
                worst = max(worst, int(np.abs(pixels.astype(int) - seed[name]).max()))
    return {"samples": total, "identical": same, "max_difference": worst}


def scaling(shards: list[Path], one_shard: Path, work: Path, rounds: int, cores: int) -> dict:
    """Wall-clock samples/s at 1..cores workers, the pipelines interleaved in each round.

    SCALED run over the batch of shards (with worker processes and as many shards as workers,
    each worker writes whole shards); the ONE_SHARD rows over one shard of as many samples,
    its samples shared by the workers. The control runs first and last in every round. A
    round is clean when the control scaled to at least 90% of linear both times (no
    neighbour was using the cores meanwhile); the medians are over the clean rounds, or over
    all rounds, flagged, when none was clean. Outputs go to `work`: main() puts it in memory
    (/dev/shm) when it can, so that the disk's flush, which no number of cores speeds up, is
    not what is measured.
    """

    def measure(
        name: str, run: Callable[..., dict] = run_pipeline, inputs: list[Path] = shards
    ) -> dict[int, float]:
        """Samples/s with 1..cores threads (run_pipeline) or processes (run_processes)."""
        rates = {}
        for count in range(1, cores + 1):
            result = run(name, inputs, work / f"{name}-{run.__name__}-{count}", count)
            shutil.rmtree(work / f"{name}-{run.__name__}-{count}", ignore_errors=True)
            rates[count] = result["samples"] / result["seconds"]
        return rates

    rounds_seen = []
    for index in range(rounds):
        record = {"control-before": measure("control")}
        record.update({name: measure(name) for name in SCALED})
        record[SEED_PROCESSES] = measure("seed", run_processes)
        for name in ONE_SHARD:
            record[f"{name}, one shard"] = measure(name, inputs=[one_shard])
        record["control-after"] = measure("control")
        rounds_seen.append(record)
        control = [record[k][cores] / record[k][1] for k in ("control-before", "control-after")]
        print(
            f"  round {index + 1}/{rounds}: control x{control[0]:.2f} / x{control[1]:.2f}, "
            + ", ".join(f"{n} x{record[n][cores] / record[n][1]:.2f}" for n in scaled_rows()),
            file=sys.stderr,
        )

    def clean(record: dict) -> bool:
        keys = ("control-before", "control-after")
        return all(record[k][cores] / record[k][1] >= 0.9 * cores for k in keys)

    used = [r for r in rounds_seen if clean(r)] or rounds_seen
    table = {}
    for name in ("control", *scaled_rows()):
        keys = ("control-before", "control-after") if name == "control" else (name,)
        runs = [r[k] for r in used for k in keys]
        table[name] = {
            "samples_per_s": {t: statistics.median(r[t] for r in runs) for t in runs[0]},
            "speedup": {t: statistics.median(r[t] / r[1] for r in runs) for t in runs[0]},
            "speedup_each_round": {t: [round(r[t] / r[1], 2) for r in runs] for t in runs[0]},
        }
    return {
        "shards": len(shards),
        "scratch": "memory (/dev/shm)" if str(work).startswith("/dev/shm") else "disk",
        "rounds": rounds,
        "clean_rounds": sum(map(clean, rounds_seen)),
        "table": table,
        "all_rounds": rounds_seen,
    }


def _memory_scratch(fallback: Path) -> Path:
    """A folder in memory for the scaling runs' outputs (see scaling), else `fallback`."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        scratch = shm / f"shardflow-bench-{os.getpid()}"
        scratch.mkdir(exist_ok=True)
        return scratch
    return fallback


def cli_runs(shards: list[Path], work: Path) -> dict[str, dict]:
    """`shardflow augment` and `shardflow run` over all the shards, as a user runs them."""
    pattern = str(shards[0]).replace("000000", f"{{000000..{len(shards) - 1:06d}}}")
    results = {}
    for name, command in (
        ("augment", [SHARDFLOW, "augment", pattern, "OUT/", "--recipe", "seed", "--quiet"]),
        ("run", [SHARDFLOW, "run", pattern, "OUT/", "--recipe", "seed", "--quiet"]),
    ):
        out = work / f"cli-{name}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        command = [str(out) + "/" if part == "OUT/" else part for part in command]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            results[name] = {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
            continue
        written = sum(
            json.loads(path.read_text())["counts"]["written"]
            for path in out.glob("*.manifest.json")
        )
        results[name] = {"shards": len(shards), "samples": written, "seconds": seconds}
    return results


# `shardflow report` in a child that prints its own peak RSS (VmHWM, see pipelines.py).
_REPORT_CHILD = (
    "import sys\n"
    "from shardflow.workflows.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "from pathlib import Path\n"
    "status = Path('/proc/self/status').read_text().splitlines()\n"
    "hwm = [line for line in status if line.startswith('VmHWM')]\n"
    "print(int(hwm[0].split()[1]) / 1024 if hwm else -1, file=sys.stderr)\n"
    "sys.exit(code)"
)


def report_memory(work: Path, samples_per_shard: int = 5000) -> dict[int, dict]:
    """`shardflow report` over 10 and 40 shards of tiny samples (every tenth image a duplicate):
    memory must stay flat in the number of samples (rows spooled, duplicates sorted outside
    memory), so the two peaks should be about equal while the time grows 4x."""
    results = {}
    for shards in (10, 40):
        directory = work / f"report-{shards}"
        data.build_tiny_shards(directory, shards=shards, samples=samples_per_shard)
        pattern = str(directory / f"s-{{0000..{shards - 1:04d}}}.tar")
        started = time.perf_counter()
        done = subprocess.run(
            [PYTHON, "-c", _REPORT_CHILD, "report", pattern, "--out", str(directory / "r")],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            results[shards * samples_per_shard] = {"error": done.stderr.strip().splitlines()[-1:]}
            continue
        results[shards * samples_per_shard] = {
            "peak_rss_mb": float(done.stderr.strip().splitlines()[-1]),
            "seconds": seconds,
        }
        shutil.rmtree(directory, ignore_errors=True)
    return results


def big_shard(gigabytes: float, directory: Path, work: Path, cores: int) -> dict:
    path = data.build_big_shard(directory / f"big-{gigabytes:g}gb.tar", gigabytes=gigabytes)
    result = run_pipeline("seed", [path], work / "big", threads=cores)
    shutil.rmtree(work / "big", ignore_errors=True)  # ~7x the input: do not keep it
    result["input_gb"] = path.stat().st_size / 1e9
    return result


def markdown(report: dict) -> str:
    rows = report["per_core"]
    docs, floor, fpng = rows["docs"], rows["floor"], rows["floor-fpng"]
    lines = [
        f"Machine: {report['machine']}. Data: {report['data']}.",
        "",
        "| pipeline | samples/s per core | wall samples/s | MB/s in | peak RSS MB "
        "| minor faults/sample | system % of CPU | out bytes/sample | vs docs | vs floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['per_core']:.1f} | {row['wall']:.1f} | {row['mb_in_per_s']:.1f} "
            f"| {row['peak_rss_mb']:.0f} | {row['faults_per_sample']:.0f} "
            f"| {100 * row['system_share']:.0f}% | {row['out_per_sample'] / 1e3:,.0f} kB "
            f"| {row['per_core'] / docs['per_core']:.1f}x "
            f"| {row['per_core'] / floor['per_core']:.2f}x |"
        )
    seed, pillow, seed_fpng = rows["seed"], rows["seed-pillow"], rows["seed-fpng"]
    train, i2d = rows["train-224"], rows["img2dataset"]
    lines += [
        "",
        "Ratios (per core, medians of the rounds):",
        f"- seed / docs: **{seed['per_core'] / docs['per_core']:.1f}x** "
        f"(without the fast-png extra: {pillow['per_core'] / docs['per_core']:.1f}x); "
        f"output size seed / docs: {seed['out_per_sample'] / docs['out_per_sample']:.3f}x "
        f"(Pillow fallback {pillow['out_per_sample'] / docs['out_per_sample']:.3f}x)",
        f"- seed-fpng / docs: **{seed_fpng['per_core'] / docs['per_core']:.1f}x**; output size "
        f"{seed_fpng['out_per_sample'] / docs['out_per_sample']:.3f}x docs",
        f"- floor / docs: {floor['per_core'] / docs['per_core']:.1f}x, "
        f"floor-fpng / docs: {fpng['per_core'] / docs['per_core']:.1f}x "
        f"(fpng output {fpng['out_per_sample'] / docs['out_per_sample']:.3f}x docs)",
        f"- seed / floor: **{floor['per_core'] / seed['per_core']:.2f}x** slower than the floor "
        f"({fpng['per_core'] / seed['per_core']:.2f}x slower than floor-fpng)",
        f"- train-224 / img2dataset-style: **{train['per_core'] / i2d['per_core']:.2f}x** "
        f"(without the fast-resize extra, numpy's area: "
        f"{rows['train-224-numpy']['per_core'] / i2d['per_core']:.2f}x; Pillow's box instead "
        f"of area: {rows['train-224-box']['per_core'] / i2d['per_core']:.2f}x, bicubic: "
        f"{rows['train-224-bicubic']['per_core'] / i2d['per_core']:.2f}x)",
    ]
    pixels = report["pixels"]
    lines.append(
        f"- pixels, seed and seed-fpng vs docs: {pixels['identical']} of {pixels['samples']} "
        "images identical "
        f"(largest difference {pixels['max_difference']} levels)"
    )
    lines += accuracy.markdown(report["accuracy"])
    scaled = report["scaling"]
    table = scaled["table"]
    threads = list(table["seed"]["speedup"])
    clean = scaled["clean_rounds"]
    lines += [
        "",
        "Scaling: wall-clock samples/s and speedup over 1 worker (threads; for the -procs "
        f"rows, worker processes: each writes whole shards of the {scaled['shards']}, or, in "
        "the one-shard rows, they share the samples of one shard as long as all of them), "
        f"outputs written to {scaled['scratch']}, medians of "
        + (
            f"the {clean} clean rounds of {scaled['rounds']} (rounds where the control, pure C "
            "work in threads, scaled to at least 90% of linear before and after: no neighbour "
            "was using the cores)"
            if clean
            else f"all {scaled['rounds']} rounds: NONE was clean (the control, pure C work in "
            "threads, did not scale either: neighbours were using the cores)"
        )
        + f". Load average {report['load_before'][0]:.1f} before the run, "
        f"{report['load_after'][0]:.1f} after.",
        "",
        "| pipeline | "
        + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)
        + " | speedup in each round |",
        "|---|" + "---:|" * len(threads) + "---|",
    ]
    for name, row in table.items():
        cells = [f"{row['samples_per_s'][t]:.1f}/s (x{row['speedup'][t]:.2f})" for t in threads]
        each = ", ".join(f"{x:.2f}" for x in row["speedup_each_round"][threads[-1]])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {each} |")
    lines += ["", "Several shards through the CLI (start-up, planning and verification included):"]
    for name, row in report["cli"].items():
        if "error" in row:
            lines.append(f"- `shardflow {name}`: failed: {row['error']}")
        else:
            lines.append(
                f"- `shardflow {name}` over {row['shards']} shards: {row['samples']} samples in "
                f"{row['seconds']:.1f} s = {row['samples'] / row['seconds']:.1f} samples/s "
                f"on {report['cores']} cores"
            )
    memory = report.get("report_memory", {})
    if memory:
        lines += ["", "`shardflow report` over tiny samples (memory flat in the sample count):"]
        for samples, row in memory.items():
            if "error" in row:
                lines.append(f"- {samples:,} samples: failed: {row['error']}")
            else:
                lines.append(
                    f"- {samples:,} samples: peak RSS {row['peak_rss_mb']:.0f} MB, "
                    f"{row['seconds']:.1f} s"
                )
    big = report.get("big")
    if big:
        lines += [
            "",
            f"Big shard: seed over a {big['input_gb']:.2f} GB shard ({big['samples']} samples, "
            f"{big['threads']} threads): peak RSS **{big['peak_rss_mb']:.0f} MB**, "
            f"{big['samples'] / big['seconds']:.1f} samples/s.",
        ]
    if "reshard" in report:
        lines += reshard_bench.markdown(report["reshard"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="samples per shard")
    parser.add_argument("--shards", type=int, default=2, help="shards in the per-core runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scaling-rounds", type=int, default=5)
    parser.add_argument("--big-gb", type=float, default=0, help="also run a shard this big")
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument(
        "--only",
        choices=("reshard", "train-224"),
        help="run only these rows (reshard: reshard_bench.py; train-224: its rows and accuracy)",
    )
    parser.add_argument(
        "--reshard-mb", type=float, default=400, help="input size of the reshard rows"
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.only == "reshard":  # synthetic JPEGs: no bench extra needed, bytes are bytes
        print("reshard rows ...", file=sys.stderr)
        shards = reshard_bench.synthetic_shards(args.data / "synth")
        rows = reshard_bench.run(shards, args.data, args.reshard_mb, args.rounds)
        print("\n".join(reshard_bench.markdown(rows)).lstrip("\n"))
        return
    print(f"building shards in {args.data} ...", file=sys.stderr)
    shards = data.build_shards(args.data, shards=max(4, args.shards), samples=args.samples)
    work = args.data / "out"
    shutil.rmtree(work, ignore_errors=True)
    if args.only == "train-224":
        rows = per_core(shards[: args.shards], work, args.rounds, TRAIN_224)
        print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        print("\n".join(train_224_markdown(rows, accuracy.measure(shards[0], args.samples))))
        return
    report: dict = {
        "machine": f"{cores} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "data": f"{args.shards} x {args.samples} samples per run, real photos as JPEGs "
        f"500-1024 px, q75-95 (benchmarks/data.py)",
        "cores": cores,
        "load_before": os.getloadavg(),
    }
    print("per core (1 thread each) ...", file=sys.stderr)
    report["per_core"] = per_core(shards[: args.shards], work, args.rounds)
    report["pixels"] = compare_pixels(shards[: args.shards], work)
    print("train-224 accuracy against an exact area average ...", file=sys.stderr)
    report["accuracy"] = accuracy.measure(shards[0], args.samples)
    print("thread scaling ...", file=sys.stderr)
    one_shard = data.build_shards(args.data / "one", shards=1, samples=4 * args.samples)[0]
    scratch = _memory_scratch(work)
    try:
        report["scaling"] = scaling(shards, one_shard, scratch, args.scaling_rounds, cores)
    finally:
        if scratch != work:
            shutil.rmtree(scratch, ignore_errors=True)
    print("CLI over several shards ...", file=sys.stderr)
    report["cli"] = cli_runs(shards, work)
    print("dataset report memory ...", file=sys.stderr)
    report["report_memory"] = report_memory(work)
    if args.big_gb > 0:
        print(f"big shard ({args.big_gb:g} GB) ...", file=sys.stderr)
        report["big"] = big_shard(args.big_gb, args.data, work, cores)
    print("reshard rows ...", file=sys.stderr)
    report["reshard"] = reshard_bench.run(shards, args.data, args.reshard_mb, args.rounds)
    report["load_after"] = os.getloadavg()
    text = markdown(report)
    print(text)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.md").write_text(text + "\n")
    (results / "latest.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
