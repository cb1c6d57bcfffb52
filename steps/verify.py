"""The verification step's checks: is every output shard complete and exactly what its manifest
says it is?

Listing a tar proves little: Python's tarfile and `tar tf` accept an archive cut at a member
boundary as a valid shorter one, and a corrupt header mid-archive silently ends a streaming
read. So each shard is streamed once through the strict `TarReader`, hashing every byte on the
way (member data is skipped, never held), and the result is compared with the manifest the
augment step wrote after a successful close: size, sha256, member names and sizes, samples,
expected members per sample, counts. Each finding is a `Problem`: a kind for scripts and a
short, precise sentence for people.

The checks (`list_archive`, `check_listing`, `check_pairing`) are pure functions over a stream,
a manifest and reports; `verify_shard` is the I/O around them for one output URL.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from . import storage
from .dataset_report import Stats
from .errors import ShardError
from .failures import every_sample_failed
from .manifest import ManifestError, manifest_url, read_manifest
from .redact import redact_text, redact_url
from .sample_table import RowBuilder, RowSink
from .samples import Placed, group_members, split_member_name
from .tar_reader import TarFormatError, TarMember, TarReader

Status = Literal["ok", "failed", "incomplete", "missing"]
_CHUNK = 1 << 20
_SHOWN = 3  # names quoted in one message before "(+N more)"
_NO_END_BLOCKS = "archive ends without its end-of-archive blocks"  # TarReader's words


@dataclass(frozen=True)
class Problem:
    """One finding: `kind` for scripts (missing, incomplete, truncated, corrupt, size, sha256,
    members, names, samples, duplicate, expect, count, failures, manifest, unreadable, input,
    extra, changed, lineage),
    `message` for people (it starts with the kind when that reads naturally)."""

    kind: str
    message: str

    def __str__(self) -> str:
        return redact_text(self.message)  # messages quote URLs, and network errors theirs

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": str(self)}


@dataclass
class KeptSample:
    """The bytes of a few members of one of a shard's first samples (for the sample sheet)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes


@dataclass
class Listing:
    """What one streaming pass over an archive found."""

    members: list[TarMember]
    size: int  # bytes in the stored object, all of them, even after a damaged part
    sha256: str
    damage: Problem | None  # the archive is not a whole, well-formed tar
    kept: list[KeptSample] = field(default_factory=list)
    ends_at_member_boundary: bool = False  # damage: stops after a member, no end blocks


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def list_archive(
    stream: BinaryIO,
    *,
    keep_samples: int = 0,
    keep: Callable[[str], bool] = lambda extension: False,
    max_keep_bytes: int = 32 << 20,
    gzipped: bool = False,
    rows: RowBuilder | None = None,
) -> Listing:
    """Stream the archive once: its members, size and sha256, and the first damage found.

    Member data is skipped (the reader discards it in bounded chunks), except, for the first
    `keep_samples` samples, the members whose extension `keep` accepts: those few are returned
    for the sample sheet, so that it costs no second read. With `rows`, every member's data
    streams through it instead (hashed per member for the per-sample table).
    """
    hashing = _HashingReader(stream)
    archive = gzip.GzipFile(fileobj=hashing, mode="rb") if gzipped else hashing  # type: ignore
    reader = TarReader(archive)  # type: ignore[arg-type]  # only read() is used
    members: list[TarMember] = []
    kept: list[KeptSample] = []
    damage: Problem | None = None
    at_boundary = False
    try:
        for member in reader:
            members.append(member)
            parts = split_member_name(member.name) if member.is_regular else None
            if parts is None:
                continue
            key, extension = parts
            data = None
            if keep_samples > 0:
                if not kept or kept[-1].key != key:
                    if len(kept) >= keep_samples:
                        keep_samples = 0  # enough: skip the rest without looking
                    else:
                        kept.append(KeptSample(key))
                if keep_samples and keep(extension) and member.size <= max_keep_bytes:
                    data = kept[-1].members[extension] = reader.read_data()
            if rows is not None:
                rows.add(
                    key, extension, member.size, [data] if data is not None else reader.iter_data()
                )
        if rows is not None:
            rows.finish()
    except TarFormatError as exc:
        damage = tar_damage(exc)
        at_boundary = exc.cause.startswith(_NO_END_BLOCKS)
    except (OSError, EOFError, zlib.error) as exc:
        if not gzipped:
            raise
        damage = Problem("corrupt", f"corrupt: not valid gzip data: {exc}")  # a damaged .tar.gz
    hashing.drain()  # size and sha256 cover the whole object, also after damage
    return Listing(members, hashing.size, hashing.sha256, damage, kept, at_boundary)


def tar_damage(exc: TarFormatError) -> Problem:
    """The reader's error as a problem: "truncated" or "corrupt"."""
    kind = "truncated" if "truncated" in exc.cause else "corrupt"
    return Problem(kind, f"{kind}: {exc.cause}")


@dataclass(frozen=True)
class ManifestView:
    """The fields of a manifest that verification relies on, type-checked (it is untrusted)."""

    input: str | None
    output_size: int
    output_sha256: str
    members: list[tuple[str, int]]
    sample_count: int
    counts: dict[str, int]
    expect: list[str] | None


def manifest_view(manifest: dict[str, Any]) -> ManifestView:
    """Raise ManifestError naming the first field that is missing or of the wrong type."""

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ManifestError(f"manifest is not valid: {what}")

    # JSON values, typed by the checks below (which mypy cannot follow through need()).
    size: Any = manifest.get("output_size")
    sha256: Any = manifest.get("output_sha256")
    need(isinstance(size, int) and size >= 0, "output_size is not a byte count")
    need(isinstance(sha256, str) and len(sha256) == 64, "output_sha256 is not a sha256")
    samples: Any = manifest.get("samples")
    need(isinstance(samples, list), "samples is not a list")
    members: list[tuple[str, int]] = []
    for sample in samples:
        need(isinstance(sample, dict) and isinstance(sample.get("members"), list), "bad sample")
        for member in sample["members"]:
            ok = isinstance(member, dict) and isinstance(member.get("name"), str)
            need(ok and isinstance(member.get("size"), int), "bad member in samples")
            members.append((member["name"], member["size"]))
    counts: Any = manifest.get("counts")
    names = ("read", "written", "dropped", "failed")
    need(
        isinstance(counts, dict) and all(isinstance(counts.get(n), int) for n in names),
        "counts must have integer read, written, dropped and failed",
    )
    expect = manifest.get("expect")
    need(
        expect is None or (isinstance(expect, list) and all(isinstance(e, str) for e in expect)),
        "expect is not a list of extensions",
    )
    source = manifest.get("input")
    return ManifestView(
        input=source if isinstance(source, str) else None,
        output_size=size,
        output_sha256=sha256,
        members=members,
        sample_count=len(samples),
        counts={n: counts[n] for n in names},
        expect=expect,
    )


@dataclass
class Sample:
    key: str
    extensions: list[str]


def group_samples(members: Iterable[TarMember]) -> tuple[list[Sample], list[Problem]]:
    """Samples by webdataset's rule (samples.group_members), and what breaks it: unsafe
    names, non-regular members, names without an extension, repeated keys."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for event in group_members(members):
        if isinstance(event, Placed):
            if event.new_sample:
                samples.append(Sample(event.key, []))
            samples[-1].extensions.append(event.extension)
            continue
        name, key = event.member.name, event.key
        if event.fault == "unsafe_name":
            problems.append(Problem("names", f"unsafe member name: {event.reason}: {name!r}"))
        elif event.fault == "not_regular":
            problems.append(Problem("names", f"{name!r} is {event.member.kind()}"))
        elif event.fault == "no_extension":
            problems.append(Problem("names", f"member {name!r} has no extension"))
        elif event.fault == "duplicate_member":
            problems.append(Problem("duplicate", f"duplicate member {name!r} in sample {key!r}"))
        else:
            problems.append(
                Problem(
                    "duplicate",
                    f"duplicate key {key!r}: member {name!r} repeats it after other samples",
                )
            )
    return samples, problems


def check_listing(
    listing: Listing, manifest: ManifestView, expect: list[str] | None
) -> list[Problem]:
    """Everything that differs between the archive as streamed and its manifest, the most
    specific finding first: damage, then names and keys, members, samples, and last the
    size and sha256 that catch whatever is left (a changed byte inside member data)."""
    problems: list[Problem] = []
    actual = [(m.name, m.size) for m in listing.members]
    difference = member_difference(actual, manifest.members)
    if listing.ends_at_member_boundary and not difference and actual:
        # Only the manifest can tell this apart from a cut after any other member.
        problems.append(
            Problem(
                "truncated",
                f"truncated: every member is present but the end-of-archive blocks after "
                f"{actual[-1][0]!r} are missing",
            )
        )
    elif listing.damage is not None:
        problems.append(listing.damage)
    samples, sample_problems = group_samples(listing.members)
    problems += sample_problems
    if difference:
        problems.append(Problem("members", f"member list differs from the manifest: {difference}"))
    written = manifest.counts["written"]
    if len(samples) != written:
        problems.append(
            Problem(
                "samples",
                f"{len(samples)} samples in the archive, but the manifest counts {written} written",
            )
        )
    wanted = expect if expect is not None else manifest.expect
    if wanted is not None:
        mismatch = expected_members_problem(samples, wanted)
        if mismatch:
            problems.append(mismatch)
    if listing.size != manifest.output_size:
        problems.append(
            Problem(
                "size",
                f"size {listing.size} bytes differs from the manifest's {manifest.output_size}",
            )
        )
    if listing.sha256 != manifest.output_sha256:
        problems.append(Problem("sha256", "sha256 differs from the manifest"))
    problems += count_problems(manifest)
    return problems


def member_difference(actual: list[tuple[str, int]], recorded: list[tuple[str, int]]) -> str:
    """Empty when equal, else what is missing, unexpected, repeated, resized or out of order."""
    if actual == recorded:
        return ""
    actual_count = Counter(name for name, _ in actual)
    recorded_count = Counter(name for name, _ in recorded)
    recorded_sizes = dict(recorded)
    missing = [n for n in recorded_count if actual_count[n] < recorded_count[n]]
    unexpected = [n for n in actual_count if recorded_count[n] == 0]
    repeated = [
        f"{n!r} appears {actual_count[n]} times, {recorded_count[n]} in the manifest"
        for n in actual_count
        if 0 < recorded_count[n] < actual_count[n]
    ]
    resized = [
        f"{name!r} has {size} bytes, not {recorded_sizes[name]}"
        for name, size in actual
        if name in recorded_sizes and recorded_sizes[name] != size
    ]
    parts = []
    if missing:
        parts.append(f"missing {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected {_names(unexpected)}")
    if repeated:
        parts.append(_first(repeated))
    if resized:
        parts.append(_first(resized))
    if not parts:
        at = next(a for a, r in zip(actual, recorded, strict=True) if a != r)
        parts.append(f"order differs at {at[0]!r}")
    return "; ".join(parts)


def expected_members_problem(samples: list[Sample], expect: list[str]) -> Problem | None:
    """One problem for all samples whose extensions are not exactly `expect`."""
    wanted = sorted(expect)
    wrong = [s for s in samples if sorted(s.extensions) != wanted]
    if not wrong:
        return None
    first = wrong[0]
    more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return Problem(
        "expect",
        f"{len(wrong)} of {len(samples)} samples do not have exactly the members "
        f"{','.join(expect)}: {first.key!r} has {','.join(first.extensions)}{more}",
    )


def count_problems(manifest: ManifestView) -> list[Problem]:
    """The manifest must agree with itself: read = written + dropped + failed."""
    counts = manifest.counts
    problems = []
    total = counts["written"] + counts["dropped"] + counts["failed"]
    if counts["read"] != total:
        problems.append(
            Problem(
                "count",
                f"counts do not add up: read {counts['read']}, but written {counts['written']}"
                f" + dropped {counts['dropped']} + failed {counts['failed']} = {total}",
            )
        )
    if every_sample_failed(counts):
        problems.append(
            Problem(
                "failures",
                f"failures: every sample failed ({counts['failed']} of {counts['read']}); the "
                "manifest lists why",
            )
        )
    if manifest.sample_count != counts["written"]:
        problems.append(
            Problem(
                "count",
                f"the manifest lists {manifest.sample_count} samples but counts "
                f"{counts['written']} written",
            )
        )
    return problems


def _names(names: list[str]) -> str:
    return _first([repr(n) for n in names], separator=", ")


def _first(items: list[str], separator: str = "; ") -> str:
    shown = separator.join(items[:_SHOWN])
    return f"{shown} (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else shown


@dataclass
class ShardReport:
    """The verdict on one output shard."""

    output: str
    input: str | None = None  # the paired input, with --inputs
    manifest_input: str | None = None  # the input the manifest names
    input_identity: dict[str, Any] | None = None  # the version of it the manifest records
    samples: int = 0
    members: int = 0
    bytes: int = 0
    sha256: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # the manifest's sample counts
    problems: list[Problem] = field(default_factory=list)
    kept: list[KeptSample] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)  # for the dataset report (not in to_dict)

    @property
    def status(self) -> Status:
        kinds = {p.kind for p in self.problems}
        if "missing" in kinds:
            return "missing"
        if "incomplete" in kinds:
            return "incomplete"
        return "failed" if self.problems else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": redact_url(self.output),
            "manifest": redact_url(manifest_url(self.output)),
            "input": redact_url(self.input) if self.input else None,
            "manifest_input": redact_url(self.manifest_input) if self.manifest_input else None,
            "status": self.status,
            "samples": self.samples,
            "members": self.members,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "problems": [p.to_dict() for p in self.problems],
        }


def verify_shard(
    output_url: str,
    options: storage.StorageOptions,
    *,
    expect: list[str] | None = None,
    input_url: str | None = None,
    keep_samples: int = 0,
    keep: Callable[[str], bool] = lambda extension: False,
    rows: RowSink | None = None,
) -> ShardReport:
    """Check one output shard against its manifest; never raises for a bad shard. With
    `rows`, the per-sample table's rows of the samples read go there (a damaged shard's up
    to the damage), counted in `report.stats` with the manifest's drops."""
    report = ShardReport(output_url, input=input_url)
    at = manifest_url(output_url)
    manifest: ManifestView | None = None
    manifest_problem: Problem | None = None
    document: dict[str, Any] | None = None
    try:
        document = read_manifest(at, options)
        if document is None:
            manifest_problem = Problem("incomplete", "no manifest: the shard is incomplete")
        else:
            manifest = manifest_view(document)
            report.manifest_input = manifest.input
            report.stats.add_manifest(document)
            report.input_identity = recorded_identity(document)
    except ManifestError as exc:
        manifest_problem = Problem("manifest", str(exc))
    except Exception as exc:  # any back-end's error: a verdict for this shard, not a crash
        manifest_problem = Problem("unreadable", f"cannot read the manifest {at}: {_error(exc)}")
    try:
        shard_exists = storage.exists(output_url, options)
    except Exception as exc:  # any back-end's error: a verdict for this shard, not a crash
        report.problems.append(Problem("unreadable", f"cannot reach the shard: {_error(exc)}"))
        return report
    if not shard_exists:
        report.problems.append(missing_problem(input_url, manifest_exists=document is not None))
        return report
    if manifest_problem is not None:
        report.problems.append(manifest_problem)
    try:
        with storage.open_input(output_url, options, compression=None) as stream:
            listing = list_archive(
                stream,
                keep_samples=keep_samples,
                keep=keep,
                gzipped=storage.compression_of(output_url) == "gzip",
                rows=RowBuilder(output_url, rows, report.stats) if rows is not None else None,
            )
    except Exception as exc:  # any back-end's error: a verdict for this shard, not a crash
        cause = exc.cause if isinstance(exc, ShardError) else _error(exc)
        report.problems.append(Problem("unreadable", f"cannot read the shard: {cause}"))
        return report
    report.members = len(listing.members)
    report.samples = len(group_samples(listing.members)[0])
    report.bytes = listing.size
    report.sha256 = listing.sha256
    report.kept = listing.kept
    if manifest is None:
        if listing.damage is not None:
            report.problems.append(listing.damage)
    else:
        report.counts = manifest.counts
        report.problems += check_listing(listing, manifest, expect)
    return report


def missing_problem(input_url: str | None, *, manifest_exists: bool) -> Problem:
    whose = f"for input {input_url!r}" if input_url else "at this URL"
    also = " (but its manifest exists)" if manifest_exists else ""
    return Problem("missing", f"missing: no output shard {whose}{also}")


def recorded_identity(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The input's identity as the manifest records it; None if it records none (older
    manifests, pipe: inputs) or something that is not one (the manifest is untrusted)."""
    identity = manifest.get("input_identity")
    return identity if isinstance(identity, dict) else None


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def check_pairing(reports: list[ShardReport], inputs: list[str]) -> None:
    """With --inputs: each output was made from its paired input, and each input has exactly
    one output. Adds the problems to the reports in place."""
    known = {storage.comparable_url(url): url for url in inputs}
    made_from: dict[str, list[str]] = defaultdict(list)
    for report in reports:
        if report.manifest_input is not None:
            made_from[storage.comparable_url(report.manifest_input)].append(report.output)
    for report in reports:
        source = report.manifest_input
        if source is None or report.input is None:
            continue
        if storage.comparable_url(source) == storage.comparable_url(report.input):
            continue
        if storage.comparable_url(source) not in known:
            report.problems.append(
                Problem("extra", f"extra: made from {source!r}, which is not one of the inputs")
            )
            continue
        report.problems.append(
            Problem("input", f"made from {source!r}, not from its paired input {report.input!r}")
        )
    for source, outputs in made_from.items():
        if len(outputs) > 1 and source in known:
            for report in reports:
                if report.output in outputs:
                    report.problems.append(
                        Problem(
                            "duplicate",
                            f"{known[source]!r} is the input of {len(outputs)} outputs: "
                            f"{_names(outputs)}",
                        )
                    )
