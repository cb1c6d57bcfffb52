"""`shardflow check`: lint any shards, read-only, and say what readers would get wrong.

Silent misreads of malformed shards fill the trackers (webdataset #140, #237, #288, #407;
Ray #44068; HF datasets #7150). The strict reader used by augment refuses such a shard at the
first problem; a check instead collects every problem of a shard in one header-only pass (the
archive's structure ends the pass only where it stops being readable: truncation, a corrupt
header), then compares the shards' samples with the dataset's usual fields.

Each finding is a `verify.Problem` (so the table and JSON are verify's), of one of these kinds:
  truncated, corrupt   the archive is cut short or a header is damaged (not repairable)
  trailing             data after the end-of-archive blocks (repair drops it)
  split                a key comes back after other samples: readers make two samples of it
                       (repair groups the members by key)
  pax                  PAX extended headers: DALI and wids' reader see other names (repair
                       writes plain GNU headers)
  duplicate            one sample has two members of one name (not repairable)
  names                unsafe names: absolute, `..`, control characters, not UTF-8
  links                links, devices, FIFOs (not repairable: no data to keep)
  noext                members without an extension, which every reader skips
  empty                members of 0 bytes (often a failed download)
  case                 upper-case extensions: webdataset lowers them, HF datasets does not
                       (repair writes them in lower case)
  longname             names over 100 bytes: wids' reader sees them cut at 100
  dotted               dots in base names that change the key (`img.v2.jpg` is key `img`)
  fields               samples whose members are not the dataset's usual ones
Only truncated, corrupt, duplicate, names and links stop `--repair`; the other kinds are
either fixed by it or left as they are (a check cannot know the intended names or fields).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .samples import split_member_name, unsafe_name_reason
from .tar_reader import TarFormatError, TarReader
from .tarlayout import USTAR_NAME_BYTES
from .verify import Problem, tar_damage

UNREPAIRABLE = frozenset(
    {"truncated", "corrupt", "duplicate", "names", "links", "unreadable", "missing"}
)
_SHOWN = 3
_PAX = (b"x", b"g")
_TRAILING = "data after the end-of-archive blocks"  # TarReader's words
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Located:
    """A regular member and where its data lies (for --repair's second pass)."""

    name: str
    offset: int
    size: int


@dataclass
class ShardScan:
    """What one pass over a shard found."""

    url: str
    size: int = 0
    members: list[Located] = field(default_factory=list)  # kept only for --repair
    identity: dict[str, Any] | None = None  # the version scanned, taken only for --repair
    member_count: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)
    field_sets: Counter[tuple[str, ...]] = field(default_factory=Counter)
    examples: dict[tuple[str, ...], str] = field(default_factory=dict)  # field set -> a key

    def unrepairable(self) -> list[str]:
        """The kinds of problem that stop --repair, sorted."""
        return sorted({p.kind for p in self.problems} & UNREPAIRABLE)


class _Findings:
    """Member names collected per kind, reported as one problem per kind."""

    def __init__(self) -> None:
        self._names: dict[str, list[str]] = {}

    def add(self, kind: str, name: str) -> None:
        self._names.setdefault(kind, []).append(name)

    def problems(self, sentences: dict[str, str]) -> list[Problem]:
        return [
            Problem(kind, f"{kind}: {sentences[kind]} ({len(names)}): {_names(names)}")
            for kind, names in self._names.items()
        ]


_SENTENCES = {
    "split": "keys that come back after other samples (readers make two samples of each)",
    "pax": "members with PAX headers (DALI and wids' reader see other names)",
    "duplicate": "member names repeated within one sample",
    "names": "unsafe member names",
    "links": "links, devices or FIFOs, not files",
    "noext": "members without an extension (every reader skips them)",
    "empty": "empty members (0 bytes)",
    "case": "upper-case extensions (webdataset lowers them, HF datasets does not)",
    "longname": "member names over 100 bytes (wids' reader cuts them at 100)",
}


def scan_shard(
    url: str, stream: BinaryIO, *, seek_size: int | None, keep_members: bool = False
) -> ShardScan:
    """One pass over the headers (seeking over data when `seek_size` is given), every finding
    collected; samples grouped as webdataset groups them. `keep_members`: the regular
    members and their data offsets, for --repair."""
    scan = ShardScan(url)
    findings = _Findings()
    reader = TarReader(stream, seek_size=seek_size)
    seen: set[str] = set()
    current_key: str | None = None
    current: list[str] = []

    def close_sample() -> None:
        if current_key is not None:
            fields = tuple(sorted(current))
            scan.field_sets[fields] += 1
            scan.examples.setdefault(fields, current_key)
            scan.samples += 1

    damage: Problem | None
    try:
        for member in reader:
            if member.is_directory:
                continue
            if any(kind in _PAX for kind in member.extensions):
                findings.add("pax", member.name)
            reason = unsafe_name_reason(member.name)
            if reason:
                findings.add("names", f"{member.name} ({reason})")
                continue
            if not member.is_regular:
                findings.add("links", f"{member.name} ({member.kind()})")
                continue
            scan.member_count += 1
            if keep_members:
                scan.members.append(Located(member.name, reader.offset, member.size))
            if member.size == 0:
                findings.add("empty", member.name)
            if len(member.name.encode("utf-8", "surrogateescape")) > USTAR_NAME_BYTES:
                findings.add("longname", member.name)
            parts = split_member_name(member.name)
            if parts is None:
                findings.add("noext", member.name)
                continue
            key, extension = parts
            raw_extension = member.name.rpartition("/")[2].partition(".")[2]
            if raw_extension != extension:
                findings.add("case", member.name)
            if key == current_key:
                if extension in current:
                    findings.add("duplicate", member.name)
                current.append(extension)
                continue
            close_sample()
            if key in seen:
                findings.add("split", key)
            seen.add(key)
            current_key, current = key, [extension]
    except TarFormatError as exc:
        if exc.cause.startswith(_TRAILING):
            damage = Problem("trailing", f"trailing: {exc.cause}")
        else:
            damage = tar_damage(exc)
    else:
        damage = None
    close_sample()
    scan.size = reader.offset
    scan.problems = findings.problems(_SENTENCES)
    if damage is not None:  # the archive's damage first, trailing data last
        scan.problems.insert(len(scan.problems) if damage.kind == "trailing" else 0, damage)
    return scan


def usual_fields(scans: list[ShardScan]) -> tuple[str, ...] | None:
    """The dataset's most common set of fields (None for a dataset without samples)."""
    total: Counter[tuple[str, ...]] = Counter()
    for scan in scans:
        total.update(scan.field_sets)
    return total.most_common(1)[0][0] if total else None


def field_problems(scan: ShardScan, usual: tuple[str, ...]) -> list[Problem]:
    """Samples whose fields are not the usual ones, and among them those where a dot in the
    base name made the key (a field like `v2.jpg` where the dataset has `jpg`, or `5.jpg`)."""
    dotted: list[str] = []
    other: list[str] = []
    other_count = 0
    dotted_count = 0
    for fields, count in scan.field_sets.items():
        if fields == usual:
            continue
        if any(_dotted(extension, usual) for extension in fields):
            dotted_count += count
            dotted.append(f"{scan.examples[fields]} ({','.join(fields)})")
        else:
            other_count += count
            other.append(f"{scan.examples[fields]} has {','.join(fields)}")
    problems = []
    if dotted_count:
        problems.append(
            Problem(
                "dotted",
                f"dotted: {dotted_count} samples have fields that look like a dotted base name "
                f"split at its first dot (readers take the key up to the first dot): "
                f"{_names(dotted)}",
            )
        )
    if other_count:
        problems.append(
            Problem(
                "fields",
                f"fields: {other_count} of {scan.samples} samples do not have the dataset's "
                f"usual members {','.join(usual)}: {_names(other, quote=False)}",
            )
        )
    return problems


def _dotted(extension: str, usual: tuple[str, ...]) -> bool:
    head, dot, tail = extension.partition(".")
    return bool(dot) and extension not in usual and (tail in usual or bool(_DIGITS.fullmatch(head)))


def _names(names: list[str], quote: bool = True) -> str:
    shown = [repr(n) if quote else n for n in names[:_SHOWN]]
    more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(shown) + more
