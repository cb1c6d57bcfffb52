"""`shardflow verify --plan WORK`: a reshard lost no sample, invented none, copied none twice.

Three lists of input samples, each an (input shard, key) pair, must agree:

1. what the inputs hold and the key list keeps: the inventory read again (the count step's
   parts) with the list the plan records;
2. what the plan gives the outputs (plan.jsonl);
3. what the outputs hold: each manifest's samples with their lineage (`from`), plus the
   samples a recipe dropped or failed (listed by key).

1 = 2 as multisets, with no pair twice in 2, is "every kept input sample is planned exactly
once"; each output's manifest listing exactly its plan line's samples, in order, is 2 = 3 and
"each output holds what the plan says". Pairs are compared as 64-bit hashes in sorted arrays:
8 bytes a sample, whatever the dataset's size.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Any

from . import storage
from .cpus import io_threads
from .errors import ShardflowError
from .key_lists import load_keys
from .manifest import ManifestError, manifest_url, read_manifest
from .output_names import OutputNames
from .parallel import ordered_map
from .redact import REDACTED
from .reshard_inventory import read_inventory
from .reshard_plan import KeyFilter, key_hash, read_lines, read_summary
from .verify import Problem, ShardReport

_SHOWN = 3


def plan_outputs(work: str, options: storage.StorageOptions) -> list[str]:
    """The outputs the plan names, in order: from the summary's pattern (a verify batch of a
    plan of 10^9 samples reads one small file), or the plan lines of a plan without one."""
    summary = read_summary(work, options)
    pattern = summary.get("output_pattern")
    if isinstance(pattern, str):
        names = OutputNames(pattern)
        return [names.url(index) for index in range(summary["outputs"])]
    return [line["url"] for line in read_lines(work, options)]


def check_lineage(
    work: str,
    reports: list[ShardReport],
    options: storage.StorageOptions,
    threads: int | None = None,
) -> str | None:
    """Add a `lineage` problem to each output that does not hold what its plan line says;
    the sentence saying what is wrong across outputs (samples missing or planned twice), or
    None. The manifests are read `threads` at a time (default: cpus.io_threads): one small
    request each, 100,000 of them for a large reshard."""
    import numpy

    summary = read_summary(work, options)
    planned = array("Q")
    by_url = {storage.comparable_url(r.output): r for r in reports}

    def check(line: dict[str, Any]) -> tuple[list[int], ShardReport | None, Problem | None]:
        refs = [ref["url"] for ref in line["inputs"]]
        entries = [(refs[s[0]], s[1], s[2] or s[1]) for s in line["samples"]]
        report = by_url.get(storage.comparable_url(line["url"]))
        problem = None
        if report is not None and report.status != "missing":
            problem = _output_problem(line["url"], entries, options)
        return [key_hash(shard, key) for shard, key, _ in entries], report, problem

    lines = read_lines(work, options)
    for hashes, report, problem in ordered_map(check, lines, threads=io_threads(threads)):
        planned.extend(hashes)
        if report is not None and problem is not None:
            report.problems.append(problem)
    plan = numpy.sort(numpy.frombuffer(planned, dtype=numpy.uint64))
    twice = int((plan[1:] == plan[:-1]).sum()) if len(plan) else 0
    if twice:
        return f"lineage: the plan gives {twice} input samples to more than one output"
    if len(plan) != summary["samples"]:
        return f"lineage: the plan lists {len(plan)} samples, its summary {summary['samples']}"
    kept = _kept_hashes(summary, work, options)
    if kept is None:
        return None
    kept.sort()
    if len(kept) != len(plan) or not numpy.array_equal(kept, plan):
        left_out = len(numpy.setdiff1d(kept, plan))
        invented = len(numpy.setdiff1d(plan, kept))
        return (
            f"lineage: {left_out} kept input samples are in no output and {invented} planned "
            "samples are in no input: the inputs or the key list changed since the plan"
        )
    return None


def _output_problem(
    url: str, entries: list[tuple[str, str, str]], options: storage.StorageOptions
) -> Problem | None:
    try:
        manifest = read_manifest(manifest_url(url), options)
    except ManifestError:
        return None  # verify reports it
    if manifest is None:
        return None
    held = list(_held(manifest))
    left = {key for key, _ in _dropped(manifest)}
    expected = [(shard, key, written) for shard, key, written in entries if written not in left]
    if [(s, k, w) for s, k, w in held] == expected and len(left) + len(held) == len(entries):
        return None
    planned = set(expected)
    invented = [w for s, k, w in held if (s, k, w) not in planned]
    missing = [w for s, k, w in expected if (s, k, w) not in set(held)]
    if invented or missing:
        return Problem(
            "lineage",
            f"lineage: holds {len(invented)} samples its plan line does not give it"
            f"{_first(invented)} and lacks {len(missing)} it gives{_first(missing)}",
        )
    return Problem("lineage", "lineage: holds its plan line's samples in another order")


def _held(manifest: dict[str, Any]) -> Iterator[tuple[str | None, str | None, str | None]]:
    for sample in manifest.get("samples") or []:
        source = sample.get("from") if isinstance(sample, dict) else None
        source = source if isinstance(source, dict) else {}
        yield source.get("shard"), source.get("key"), sample.get("key")


def _dropped(manifest: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    for name in ("dropped", "failed"):
        for record in manifest.get(name) or []:
            if isinstance(record, dict):
                yield record.get("key"), record.get("reason")


def _kept_hashes(summary: dict[str, Any], work: str, options: storage.StorageOptions) -> Any:
    """Hashes of every input sample the key list keeps, read from the inventory again; None
    when the plan does not record where its inputs and key list are (a signed URL)."""
    import numpy

    pattern = summary.get("input_pattern") or ""
    keys = summary.get("keys") or {}
    if not pattern or REDACTED in pattern or REDACTED in (keys.get("url") or ""):
        return None
    keep = KeyFilter()
    if keys.get("url"):
        try:
            listed = load_keys(keys["url"], options, column=keys.get("column"))
        except ShardflowError:
            return None
        keep = KeyFilter(listed, keep=keys.get("mode") == "keep")
    inputs = storage.expand(pattern)
    hashes = array("Q")
    for line in read_inventory(work, inputs, summary["inputs_per_task"], options):
        hashes.extend(key_hash(line["url"], key) for key, _ in line["samples"] if keep.kept(key))
    return numpy.frombuffer(hashes, dtype=numpy.uint64).copy()


def _first(names: Sequence[str | None]) -> str:
    if not names:
        return ""
    more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return " (" + ", ".join(repr(n) for n in names[:_SHOWN]) + more + ")"
