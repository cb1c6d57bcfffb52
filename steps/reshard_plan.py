"""The reshard plan: which samples, from which inputs, each output shard holds, in order.

Made once from the inventory (reshard_inventory.py), the key list, the sizing and the seed,
it is what makes every output a pure function of its line: a write task reads its output's
line, fetches those byte ranges and writes them; a rerun writes the same bytes. Three files
in the work folder, the last written last (its presence means the plan is complete):

- `plan.jsonl`: one line per output, in output order: `{"output": j, "url", "inputs": [{url,
  identity}], "samples": [[input (index in "inputs"), key, new key or null, [[member name,
  data offset, size], ...]], ...], "bytes", "oversized"}`;
- `plan.offsets`: the byte offset of each line and the end, little-endian uint64, so a task
  reads its own line with one ranged read (the plan of 10^6 shards is never loaded whole);
- `plan.json`: the summary (counts, sizing, seed, key list, outputs and their pattern: a
  verify batch names the outputs from it without reading plan.jsonl).

Rules:
- Samples keep INPUTS order (input by input, then archive order) unless `--shuffle SEED`:
  then a uniform permutation of all kept samples (NumPy's PCG64 generator seeded with SEED,
  `Generator.permutation`; the plan records the result, so reruns never depend on NumPy).
- `--samples-per-shard N`: N per output, the last one the rest. `--shards M`: M outputs
  whose counts differ by at most one (the first N mod M get one more: every worker of M gets
  an equal share). `--max-shard-bytes B`: outputs filled in order while the tar (headers,
  padding, end blocks and record padding counted exactly) stays within B; a sample that
  alone exceeds B gets an output of its own, marked `oversized`.
- A key kept from two inputs (or twice in one) is an error naming both shards; with
  `--rename-duplicates`, the first occurrence in plan order before shuffling keeps its key
  and the n-th later one becomes `KEY_dupN` (an error if that name is taken too).

Memory: without --shuffle the plan is streamed (one output's samples at a time); every kept
sample costs 8 bytes (a key hash, for the duplicate check), 16 more with --shuffle (the
permutation and the offset of the sample's record in a temporary file).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import storage
from .errors import DataError, ShardError, UsageError
from .jsonl import read_json_lines
from .output_names import OutputNames
from .pairing import Write, refuse_aliases
from .tarlayout import BLOCK, header_bytes

PLAN_FORMAT = "shardflow.reshard-plan/1"
RECORD = 10240  # tarfile pads an archive to a multiple of 20 blocks
FIRST_NOT_FOUND = 5  # missing keys named in the report


@dataclass(frozen=True)
class Sizing:
    samples_per_shard: int | None = None
    shards: int | None = None
    max_shard_bytes: int | None = None

    def describe(self) -> dict[str, int | None]:
        return {
            "samples_per_shard": self.samples_per_shard,
            "shards": self.shards,
            "max_shard_bytes": self.max_shard_bytes,
        }


@dataclass(frozen=True)
class KeyFilter:
    """--keep-keys or --drop-keys: the list and which it is (None: every sample is kept)."""

    keys: set[str] | None = None
    keep: bool = True
    url: str | None = None  # as shown (without credentials)
    column: str | None = None  # of a Parquet list

    @property
    def mode(self) -> str | None:
        return None if self.keys is None else "keep" if self.keep else "drop"

    def kept(self, key: str) -> bool:
        return self.keys is None or ((key in self.keys) == self.keep)


@dataclass(frozen=True)
class PlanSettings:
    sizing: Sizing
    keys: KeyFilter
    seed: int | None = None
    rename_duplicates: bool = False
    input_pattern: str = ""  # recorded, so that verify can read the inventory again
    inputs_per_task: int = 1


def plan_urls(work: str) -> tuple[str, str, str]:
    """(plan.jsonl, plan.offsets, plan.json) in the work folder."""
    base = work.rstrip("/")
    return f"{base}/plan.jsonl", f"{base}/plan.offsets", f"{base}/plan.json"


def key_hash(*parts: str) -> int:
    digest = hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def sample_bytes(members: Iterable[tuple[str, int]]) -> int:
    """Bytes the writer spends on a sample's members (headers, data, padding)."""
    return sum(header_bytes(name) + size + (-size % BLOCK) for name, size in members)


def tar_size(content: int) -> int:
    """The archive's size around `content` bytes of members (end blocks, record padding)."""
    total = content + 2 * BLOCK
    return total + (-total % RECORD)


Inventory = Callable[[], Iterator[dict[str, Any]]]  # a fresh pass over the inventory's lines


@dataclass
class _Survey:
    kept: int
    renames: dict[str, list[str | None]]
    not_found: list[str]
    not_found_count: int


def _survey(inventory: Inventory, settings: PlanSettings) -> _Survey:
    """Pass 1: count the kept samples, find keys of the list in no input, and duplicates."""
    hashes = array("Q")
    found: set[str] = set()
    for line in inventory():
        for key, _ in line["samples"]:
            if settings.keys.keys is not None and key in settings.keys.keys:
                found.add(key)
            if settings.keys.kept(key):
                hashes.append(key_hash(key))
    missing = sorted(settings.keys.keys - found) if settings.keys.keys is not None else []
    renames = _duplicates(inventory, settings, hashes) if _has_repeats(hashes) else {}
    return _Survey(len(hashes), renames, missing[:FIRST_NOT_FOUND], len(missing))


def _has_repeats(hashes: array) -> bool:
    import numpy

    values = numpy.frombuffer(hashes, dtype=numpy.uint64) if len(hashes) else numpy.zeros(0)
    return bool(len(values) != len(numpy.unique(values)))


def _duplicates(
    inventory: Inventory, settings: PlanSettings, hashes: array
) -> dict[str, list[str | None]]:
    """Keys kept more than once: an error naming two shards, or with --rename-duplicates the
    new name of each occurrence (None: the first, which keeps its key)."""
    import numpy

    values = numpy.sort(numpy.frombuffer(hashes, dtype=numpy.uint64))
    repeated = set(values[1:][values[1:] == values[:-1]].tolist())
    where: dict[str, list[str]] = {}
    for line in inventory():
        for key, _ in line["samples"]:
            if settings.keys.kept(key) and key_hash(key) in repeated:
                where.setdefault(key, []).append(line["url"])
    duplicated = {key: urls for key, urls in where.items() if len(urls) > 1}
    if not duplicated:
        return {}  # hash collisions between different keys
    if not settings.rename_duplicates:
        key, urls = next(iter(duplicated.items()))
        more = f" ({len(duplicated) - 1} more keys are duplicated)" if len(duplicated) > 1 else ""
        raise DataError(
            urls[1],
            f"duplicate key: also in {urls[0]}{more}; give --rename-duplicates to keep every "
            "occurrence under a new key (KEY_dupN)",
            key=key,
        )
    renames = {
        key: [None, *(f"{key}_dup{n}" for n in range(1, len(urls)))]
        for key, urls in duplicated.items()
    }
    taken = set(numpy.frombuffer(hashes, dtype=numpy.uint64).tolist())
    for key, names in renames.items():
        for name in names[1:]:
            assert name is not None
            if key_hash(name) in taken:
                raise DataError(
                    duplicated[key][0],
                    f"duplicate key: its rename {name!r} is a key too; rename by hand",
                    key=key,
                )
            taken.add(key_hash(name))
    return renames


def _kept_samples(
    inventory: Inventory, settings: PlanSettings, renames: dict[str, list[str | None]]
) -> Iterator[list[Any]]:
    """Pass 2: [input url, identity, key, new key, members] of each kept sample, in order."""
    seen: dict[str, int] = {}
    for line in inventory():
        for key, members in line["samples"]:
            if not settings.keys.kept(key):
                continue
            new_key = None
            if key in renames:
                occurrence = seen.get(key, 0)
                seen[key] = occurrence + 1
                new_key = renames[key][occurrence]
            yield [line["url"], line["identity"], key, new_key, members]


def _shuffled(samples: Iterator[list[Any]], count: int, seed: int) -> Iterator[list[Any]]:
    """The samples in the order of a seeded uniform permutation, through a temporary file."""
    import numpy

    offsets = array("Q")
    with tempfile.TemporaryFile() as spool:
        for sample in samples:
            offsets.append(spool.tell())
            spool.write(json.dumps(sample, ensure_ascii=False).encode("utf-8") + b"\n")
        offsets.append(spool.tell())
        assert len(offsets) == count + 1
        order = numpy.random.Generator(numpy.random.PCG64(seed)).permutation(count)
        for start in range(0, count, 1 << 16):  # Python ints for a slice at a time only
            for position in order[start : start + (1 << 16)].tolist():
                spool.seek(offsets[position])
                yield json.loads(spool.read(offsets[position + 1] - offsets[position]))


def _sizes(sizing: Sizing, count: int) -> Iterator[int] | None:
    """Samples per output, for the count-based sizings."""
    if sizing.samples_per_shard is not None:
        full, rest = divmod(count, sizing.samples_per_shard)
        return iter([sizing.samples_per_shard] * full + ([rest] if rest else []))
    if sizing.shards is not None:
        if count < sizing.shards:
            raise UsageError(
                f"{count} kept samples cannot fill {sizing.shards} shards: give at most {count}"
            )
        share, extra = divmod(count, sizing.shards)
        return iter([share + 1] * extra + [share] * (sizing.shards - extra))
    return None


def _group(samples: Iterator[list[Any]], sizing: Sizing, count: int) -> Iterator[list[list[Any]]]:
    """The samples cut into outputs."""
    sizes = _sizes(sizing, count)
    if sizes is not None:
        for size in sizes:
            yield [next(samples) for _ in range(size)]
        return
    limit = sizing.max_shard_bytes
    assert limit is not None
    current: list[list[Any]] = []
    content = 0
    for sample in samples:
        grown = sample_bytes(_renamed_members(sample))
        if current and tar_size(content + grown) > limit:
            yield current
            current, content = [], 0
        current.append(sample)
        content += grown
    if current:
        yield current


def _renamed_members(sample: list[Any]) -> list[tuple[str, int]]:
    _, _, key, new_key, members = sample
    return [(renamed(name, key, new_key), size) for name, _, size in members]


def renamed(name: str, key: str, new_key: str | None) -> str:
    """A member name under the sample's new key (`a/k.seg.png` -> `a/k_dup1.seg.png`)."""
    return name if new_key is None else new_key + name[len(key) :]


def _line(index: int, url: str, samples: list[list[Any]], limit: int | None) -> dict[str, Any]:
    inputs: dict[str, int] = {}
    refs: list[dict[str, Any]] = []
    rows = []
    content = 0
    for source, identity, key, new_key, members in samples:
        if source not in inputs:
            inputs[source] = len(refs)
            refs.append({"url": source, "identity": identity})
        rows.append([inputs[source], key, new_key, members])
        content += sample_bytes(_renamed_members([source, identity, key, new_key, members]))
    size = tar_size(content)
    return {
        "output": index,
        "url": url,
        "inputs": refs,
        "samples": rows,
        "bytes": size,
        "oversized": limit is not None and size > limit,
    }


def make_plan(
    inventory: Inventory,
    inputs: list[str],
    names: OutputNames,
    settings: PlanSettings,
    work: str,
    options: storage.StorageOptions,
) -> dict[str, Any]:
    """Write the plan files; the summary (what plan.json holds). UsageError when OUTPUTS
    names too few shards, before anything is published."""
    survey = _survey(inventory, settings)
    if survey.kept == 0:
        listed = (
            f" ({survey.not_found_count} listed keys are in no input)"
            if survey.not_found_count
            else ""
        )
        raise UsageError(f"no sample is kept: nothing to reshard{listed}")
    sizes = _sizes(settings.sizing, survey.kept)
    if sizes is not None:
        names.require(sum(1 for _ in sizes))
    samples = _kept_samples(inventory, settings, survey.renames)
    if settings.seed is not None:
        samples = _shuffled(samples, survey.kept, settings.seed)
    lines_url, offsets_url, summary_url = plan_urls(work)
    offsets = array("Q")
    outputs: list[str] = []
    oversized = 0
    try:
        with storage.publish_atomically(lines_url, options) as stream:
            position = 0
            for index, group in enumerate(_group(samples, settings.sizing, survey.kept)):
                names.require(index + 1)
                line = _line(index, names.url(index), group, settings.sizing.max_shard_bytes)
                oversized += line["oversized"]
                outputs.append(line["url"])
                data = json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n"
                offsets.append(position)
                stream.write(data)
                position += len(data)
            offsets.append(position)
            refuse_aliases(inputs, _writes(outputs))
        storage.write_atomically(offsets_url, offsets.tobytes(), options)
    except OSError as exc:
        raise ShardError(lines_url, f"cannot write the plan: {exc}") from None
    summary = {
        "format": PLAN_FORMAT,
        "input_pattern": settings.input_pattern,
        "inputs_per_task": settings.inputs_per_task,
        "inputs": len(inputs),
        "outputs": len(outputs),
        "samples": survey.kept,
        "sizing": settings.sizing.describe(),
        "shuffle": settings.seed,
        "keys": {
            "url": settings.keys.url,
            "mode": None
            if settings.keys.keys is None
            else "keep"
            if settings.keys.keep
            else "drop",
            "listed": None if settings.keys.keys is None else len(settings.keys.keys),
            "not_found": survey.not_found_count,
            "first_not_found": survey.not_found,
        },
        "renamed": sum(len(v) - 1 for v in survey.renames.values()),
        "oversized": oversized,
        "first_output": outputs[0],
        "last_output": outputs[-1],
        "output_pattern": names.pattern,  # output j is OutputNames(pattern).url(j)
    }
    storage.write_atomically(summary_url, json.dumps(summary, indent=1).encode() + b"\n", options)
    return summary


def _writes(outputs: list[str]) -> list[Write]:
    from .manifest import manifest_url

    writes = []
    for url in outputs:
        writes.append(Write(url, "an output"))
        writes.append(Write(manifest_url(url), "the manifest of", url))
    return writes


def read_summary(work: str, options: storage.StorageOptions) -> dict[str, Any]:
    """plan.json; ShardError when the plan step has not finished."""
    url = plan_urls(work)[2]
    data = storage.read_bytes(url, options)
    if data is None:
        raise ShardError(url, "no plan: run the count and plan steps first")
    summary = json.loads(data)
    if not isinstance(summary, dict) or summary.get("format") != PLAN_FORMAT:
        raise ShardError(url, f"not a {PLAN_FORMAT} summary")
    return summary


def read_line(work: str, index: int, options: storage.StorageOptions) -> bytes:
    """The plan line of output `index`, by two ranged reads (offsets, then the line)."""
    lines_url, offsets_url, _ = plan_urls(work)
    fs, path = storage.filesystem(offsets_url, options)
    raw = fs.cat_file(path, start=8 * index, end=8 * index + 16)
    start, end = array("Q", raw)
    fs, path = storage.filesystem(lines_url, options)
    return fs.cat_file(path, start=start, end=end)


def read_lines(work: str, options: storage.StorageOptions) -> Iterator[dict[str, Any]]:
    """Every plan line in order, streamed."""
    return read_json_lines(plan_urls(work)[0], options)
