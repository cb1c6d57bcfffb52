"""Dataset indexes: how many samples each shard holds, and where each member's data lies.

Readers cannot tell how many samples a WebDataset has without a full pass; trainers guess
(open_clip PR #339) and indexers take days (Energon #165). Three formats, read by others:

- `wids-shard-index-v1` (JSON), as webdataset's indexed reader `wids.ShardListDataset` opens
  it: `__kind__`, `wids_version` 1, `name`, and `shardlist` entries `{url, nsamples,
  filesize}` in dataset order. Global sample i is in the first shard whose cumulative
  `nsamples` exceeds i (`locate`). A relative `url` is resolved against the index's own
  directory, so an index beside its shards names them by file name. `md5sum` is left out: it
  would need a full read, and wids does not check it when it opens a shard.
- `sizes.json` beside the shards, `{file name: nsamples}`, as open_clip's `get_dataset_size`
  (and DataComp) read it; entries for other shards in the directory are kept.
- DALI's `.idx` (`wds2idx`, version v1.2), one per shard: a line `v1.2 <samples>`, then one
  line per sample of `<ext> <data offset> <size> <member name>` for each member (offsets of
  the member data, multiples of 512; ext is the name after the first dot of the base name).

Samples are counted as webdataset, wids and DALI group them: runs of adjacent regular members
sharing a key; a key that comes back later counts again (`shardflow check` reports it).
Members without an extension, directories, links and devices are not samples' members.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from . import storage
from .errors import DataError, ShardError, UsageError
from .manifest import ManifestError, manifest_url, read_manifest
from .samples import split_member_name
from .tar_reader import TarFormatError, TarReader
from .tarlayout import data_offsets

WIDS_KIND = "wids-shard-index-v1"
INDEX_SUFFIX = "shardindex.json"  # wids' own default name, after a dataset prefix
SIZES_NAME = "sizes.json"
DALI_VERSION = "v1.2"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@,-]*")  # safe as a relative URL
_PREFIX_TAIL = re.compile(r"[\d_.-]+$")


@dataclass(frozen=True)
class IndexedMember:
    name: str
    offset: int  # of the member's data
    size: int


@dataclass
class ShardIndex:
    """One shard: its URL, stored size and samples (members grouped by key, in order)."""

    url: str
    filesize: int
    samples: list[list[IndexedMember]] = field(default_factory=list)
    source: str = "headers"  # or "manifest": indexed without reading the shard
    count: int | None = None  # the sample count alone, for a shard indexed by another task

    @property
    def nsamples(self) -> int:
        return self.count if self.count is not None else len(self.samples)

    def counts_only(self) -> ShardIndex:
        """The same shard without its member offsets (memory stays flat over many shards)."""
        return ShardIndex(self.url, self.filesize, source=self.source, count=self.nsamples)


def group_members(members: Iterable[IndexedMember]) -> list[list[IndexedMember]]:
    """Adjacent members with the same key form a sample; names without an extension are
    skipped, as webdataset, wids and DALI do."""
    samples: list[list[IndexedMember]] = []
    last_key: str | None = None
    for member in members:
        parts = split_member_name(member.name)
        if parts is None:
            continue
        if not samples or parts[0] != last_key:
            samples.append([])
            last_key = parts[0]
        samples[-1].append(member)
    return samples


def index_from_manifest(url: str, manifest: dict[str, Any]) -> ShardIndex:
    """A shard we wrote, from its manifest: the writer's layout is deterministic."""
    names = [(m["name"], m["size"]) for s in manifest["samples"] for m in s["members"]]
    offsets = iter(data_offsets(names))
    samples = [
        [IndexedMember(m["name"], next(offsets), m["size"]) for m in sample["members"]]
        for sample in manifest["samples"]
    ]
    return ShardIndex(url, manifest["output_size"], samples, source="manifest")


def index_from_stream(url: str, stream: BinaryIO, *, seek_size: int | None) -> ShardIndex:
    """Any shard, from its headers; with `seek_size` member data is skipped by seeking.
    Raises DataError for a damaged archive (an index of it would be wrong)."""
    reader = TarReader(stream, seek_size=seek_size)
    members = []
    try:
        for member in reader:
            if member.is_regular:
                members.append(IndexedMember(member.name, reader.offset, member.size))
    except TarFormatError as exc:
        parts = split_member_name(exc.member) if exc.member else None
        raise DataError(url, exc.cause, key=parts[0] if parts else None) from None
    return ShardIndex(url, reader.offset, group_members(members))


def locate(nsamples: list[int], index: int) -> tuple[int, int]:
    """(shard position, sample within the shard) of global sample `index`, as wids maps it
    (cumulative counts, the first shard whose running total exceeds the index)."""
    cumulative = []
    total = 0
    for count in nsamples:
        total += count
        cumulative.append(total)
    if not 0 <= index < total:
        raise IndexError(f"sample {index} is outside the dataset's {total} samples")
    shard = bisect.bisect_right(cumulative, index)
    return shard, index - (cumulative[shard - 1] if shard else 0)


def default_index_url(shards: list[str]) -> str:
    """`DIR/PREFIX.shardindex.json` in the first shard's directory, PREFIX being the file
    names' common start without trailing digits and separators (`train-{000..009}.tar` ->
    `train.shardindex.json`), so two datasets in one directory get two indexes."""
    directory, _ = _split(shards[0])
    names = [_split(url)[1].partition(".")[0] for url in shards]
    prefix = _PREFIX_TAIL.sub("", os.path.commonprefix(names))  # noqa: RUF071 (by character)
    name = f"{prefix}.{INDEX_SUFFIX}" if prefix else INDEX_SUFFIX
    return f"{directory}/{name}" if directory else name


def wids_document(shards: list[ShardIndex], index_url: str, name: str) -> dict[str, Any]:
    """The wids-shard-index-v1 JSON; shards in the index's directory by file name."""
    directory = _split(storage.comparable_url(index_url))[0]
    entries = []
    for shard in shards:
        where, file = _split(storage.comparable_url(shard.url))
        relative = where == directory and _PLAIN_NAME.fullmatch(file) is not None
        url = file if relative else storage.comparable_url(shard.url)
        entries.append({"url": url, "nsamples": shard.nsamples, "filesize": shard.filesize})
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": entries}


def dali_index(shard: ShardIndex) -> str:
    """The shard's DALI index (wds2idx v1.2); ShardError when DALI could not read it."""
    if not shard.samples:
        raise DataError(shard.url, "no samples: a DALI index must count at least one")
    lines = [f"{DALI_VERSION} {shard.nsamples}"]
    for sample in shard.samples:
        fields = []
        for member in sample:
            if any(ch.isspace() for ch in member.name):
                raise DataError(
                    shard.url,
                    f"member {member.name!r} has white space in its name, which DALI's "
                    "index format cannot hold",
                )
            extension = member.name.rpartition("/")[2].partition(".")[2]
            fields.append(f"{extension} {member.offset} {member.size} {member.name}")
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def dali_index_url(shard_url: str) -> str:
    """`train-000000.tar` -> `train-000000.idx`, where wds2idx puts it by default."""
    directory, file = _split(shard_url)
    stem = file.partition(".")[0] if not file.startswith(".") else file
    return f"{directory}/{stem}.idx" if directory else f"{stem}.idx"


def dataset_name(index_url: str) -> str:
    file = _split(index_url)[1]
    name = file[: -len(INDEX_SUFFIX)].rstrip(".")
    return name or _split(_split(index_url)[0])[1] or "dataset"


def write_dataset_index(
    shards: list[ShardIndex],
    index_url: str,
    options: storage.StorageOptions,
    *,
    dali: bool = False,
) -> list[str]:
    """Write, with `dali`, each shard's `.idx`, then each directory's sizes.json and the wids
    index, every file atomically; the URLs written, in that order."""
    written = write_dali_indexes(shards, index_url, options) if dali else []
    return written + write_counts(shards, index_url, options)


def write_dali_indexes(
    shards: list[ShardIndex], index_url: str, options: storage.StorageOptions
) -> list[str]:
    """Each shard's DALI index beside it (beside the index for shards that cannot be written
    to, such as http); ShardError for a shard DALI's format cannot describe."""
    written = []
    for shard in shards:
        url = _beside(dali_index_url(shard.url), index_url)
        storage.write_atomically(url, dali_index(shard).encode("utf-8"), options)
        written.append(url)
    return written


def write_counts(
    shards: list[ShardIndex], index_url: str, options: storage.StorageOptions
) -> list[str]:
    """Each directory's sizes.json (beside the index for read-only shards), then the wids
    index."""
    written = []
    by_directory: dict[str, dict[str, int]] = {}
    for shard in shards:
        directory = _split(_beside(shard.url, index_url))[0]
        by_directory.setdefault(directory, {})[_split(shard.url)[1]] = shard.nsamples
    for directory, counts in by_directory.items():
        url = f"{directory}/{SIZES_NAME}" if directory else SIZES_NAME
        sizes = {**_existing_sizes(url, options), **counts}
        storage.write_atomically(url, json_bytes(sizes), options)
        written.append(url)
    document = wids_document(shards, index_url, dataset_name(index_url))
    storage.write_atomically(index_url, json_bytes(document), options)
    written.append(index_url)
    return written


def _beside(url: str, index_url: str) -> str:
    """`url`, or the file of that name in the index's directory when `url` is read-only."""
    try:
        storage.check_url(url, writing=True)
    except UsageError:
        directory = _split(index_url)[0]
        return f"{directory}/{_split(url)[1]}" if directory else _split(url)[1]
    return url


def _existing_sizes(url: str, options: storage.StorageOptions) -> dict[str, int]:
    """The counts already in a sizes.json (other shards of the directory); an unreadable one
    is replaced."""
    data = storage.read_bytes(url, options)
    try:
        sizes = json.loads(data) if data else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(sizes, dict):
        return {}
    return {k: v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)}


def json_bytes(document: Any) -> bytes:
    return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


def _split(url: str) -> tuple[str, str]:
    directory, _, file = url.rstrip("/").rpartition("/")
    return directory, file


def index_outputs(
    urls: list[str], options: storage.StorageOptions, *, dali: bool = False
) -> list[str]:
    """Write the dataset index of finished outputs from their manifests (no shard is read):
    what a run does last. The URLs written."""
    shards = []
    for url in urls:
        try:
            manifest = read_manifest(manifest_url(url), options)
        except ManifestError as exc:
            raise ShardError(url, str(exc)) from None
        if manifest is None:
            raise ShardError(url, "no manifest: the shard is not finished, so it is not indexed")
        shards.append(index_from_manifest(url, manifest))
    return write_dataset_index(shards, default_index_url(urls), options, dali=dali)
