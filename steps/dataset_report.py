"""The dataset report: what a person looks at after a run (or about anyone's shards).

Made from the per-sample rows (sample_table.py) and, for shards we wrote, the manifests'
counts and reasons: samples, members and bytes; drops and failures by reason; histograms of
image sides, aspect ratios and formats; the label distribution; and groups of exact duplicate
images (same sha256 of the image member) across the whole dataset.

Everything but the duplicates is a `Stats` of fixed size that adds up: each verify batch
makes one over its shards and the last step sums them, so the result does not depend on how
the shards were batched. Labels are counted up to MAX_LABELS distinct values (class ids stay
well below; free text would not), reasons up to MAX_REASONS, the rest under "(other)".
Duplicates need every hash at once; they are found by an external sort (spool_sort.py), never
a dict of every hash.

Plots are drawn with Pillow, already a dependency: a bar chart is boxes and text, and
matplotlib (tens of MB with its fonts and backends, in every pod image) would draw the same
bars. Written beside the contact sheet:
    dataset-report.json      this report (format shardflow.dataset-report/1)
    dataset-sizes.png        image widths and heights (pixels, power-of-two bins)
    dataset-aspect.png       aspect ratios (width / height)
    dataset-labels.png       the most frequent labels
    dataset-duplicates.jsonl one line per group of identical images:
                             {sha256, count, samples: [[shard, key], ...]} (first GROUP_LISTED)
"""

from __future__ import annotations

import heapq
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from . import storage
from .redact import redact_url

REPORT_FORMAT = "shardflow.dataset-report/1"
REPORT_NAME = "dataset-report.json"
DUPLICATES_NAME = "dataset-duplicates.jsonl"
TABLE_DIR = "dataset-samples"
PLOTS = {
    "sizes": "dataset-sizes.png",
    "aspect": "dataset-aspect.png",
    "labels": "dataset-labels.png",
}
MAX_LABELS = 10_000
MAX_REASONS = 1_000  # distinct drop or failure reasons (numbers already replaced by N)
OTHER = "(other)"
GROUP_LISTED = 100  # samples listed per duplicate group (all are counted)
LARGEST_GROUPS = 10  # groups quoted in the report itself
PLOTTED_LABELS = 30
SIDE_EDGES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SIDE_BINS = (
    "<32",
    *(f"{low}-{high - 1}" for low, high in pairwise(SIDE_EDGES)),
    f">={SIDE_EDGES[-1]}",
)
# width / height at each edge, as exact fractions (num, den): no float rounding at a bin edge.
ASPECT_EDGES = ((1, 4), (1, 2), (2, 3), (9, 10), (10, 9), (3, 2), (2, 1), (4, 1))
ASPECT_BINS = (
    "<1:4",
    "1:4-1:2",
    "1:2-2:3",
    "2:3-9:10",
    "~1:1",
    "10:9-3:2",
    "3:2-2:1",
    "2:1-4:1",
    ">=4:1",
)
_NUMBER = re.compile(r"\d+(\.\d+)?")
_TABLE_PART = re.compile(r"part-\d{6}\.(jsonl|parquet)")


def reason_class(reason: str) -> str:
    """A drop or failure reason without its numbers, so that "height 20 is below 64" and
    "height 31 is below 64" count as one reason."""
    return _NUMBER.sub("N", str(reason))[:200]


def side_bin(pixels: int) -> int:
    return sum(pixels >= edge for edge in SIDE_EDGES)


def aspect_bin(width: int, height: int) -> int:
    return sum(width * den >= height * num for num, den in ASPECT_EDGES)


_SCALARS = (
    "shards",
    "samples",
    "members",
    "bytes",
    "images",
    "unreadable_headers",
    "without_image",
    "unlabelled",
    "manifests",
    "read",
    "written",
)


@dataclass
class Stats:
    """Counts that add up over shards, batches and runs."""

    shards: int = 0
    samples: int = 0
    members: int = 0
    bytes: int = 0
    images: int = 0  # samples with an image member whose header was read
    unreadable_headers: int = 0  # image member present, header not read
    without_image: int = 0
    formats: Counter = field(default_factory=Counter)
    widths: list[int] = field(default_factory=lambda: [0] * len(SIDE_BINS))
    heights: list[int] = field(default_factory=lambda: [0] * len(SIDE_BINS))
    aspects: list[int] = field(default_factory=lambda: [0] * len(ASPECT_BINS))
    labels: Counter = field(default_factory=Counter)
    unlabelled: int = 0
    # From the manifests (shards we wrote): counts and reasons; None for other shards.
    manifests: int = 0
    read: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)

    def add_row(self, row: dict[str, Any]) -> None:
        self.samples += 1
        self.members += len(row["members"])
        self.bytes += sum(m["size"] for m in row["members"])
        if row["image"] is None:
            self.without_image += 1
        elif row["width"] is None:
            self.unreadable_headers += 1
        else:
            self.images += 1
            _bounded_add(self.formats, row["format"], 1, MAX_LABELS)
            self.widths[side_bin(row["width"])] += 1
            self.heights[side_bin(row["height"])] += 1
            self.aspects[aspect_bin(row["width"], row["height"])] += 1
        if row["label"] is None:
            self.unlabelled += 1
        else:
            _bounded_add(self.labels, row["label"], 1, MAX_LABELS)

    def add_manifest(self, manifest: dict[str, Any]) -> None:
        """A shard's manifest: its read and written counts, and why samples were left out."""
        counts = manifest.get("counts") or {}
        self.manifests += 1
        self.read += int(counts.get("read", 0))
        self.written += int(counts.get("written", 0))
        for name, counter in (("dropped", self.dropped), ("failed", self.failed)):
            for entry in manifest.get(name) or []:
                if isinstance(entry, dict):
                    _bounded_add(counter, reason_class(entry.get("reason", "")), 1, MAX_REASONS)

    def merge(self, other: Stats) -> None:
        for name in _SCALARS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("widths", "heights", "aspects"):
            setattr(
                self,
                name,
                [a + b for a, b in zip(getattr(self, name), getattr(other, name), strict=True)],
            )
        for name, limit in (
            ("formats", MAX_LABELS),
            ("labels", MAX_LABELS),
            ("dropped", MAX_REASONS),
            ("failed", MAX_REASONS),
        ):
            mine = getattr(self, name)
            for key, count in sorted(getattr(other, name).items()):
                _bounded_add(mine, key, count, limit)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; counters sorted by count (then name), so equal stats dump equally."""
        document = {
            name: getattr(self, name) for name in (*_SCALARS, "widths", "heights", "aspects")
        }
        for name in ("formats", "labels", "dropped", "failed"):
            document[name] = _sorted_counts(getattr(self, name))
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Stats:
        stats = cls()
        for name in _SCALARS:
            setattr(stats, name, int(document[name]))
        for name, bins in (("widths", SIDE_BINS), ("heights", SIDE_BINS), ("aspects", ASPECT_BINS)):
            values = [int(v) for v in document[name]]
            if len(values) != len(bins):
                raise ValueError(f"{name} has {len(values)} bins, not {len(bins)}")
            setattr(stats, name, values)
        for name in ("formats", "labels", "dropped", "failed"):
            setattr(stats, name, Counter({str(k): int(v) for k, v in document[name].items()}))
        return stats


def _bounded_add(counter: Counter, key: str, count: int, limit: int) -> None:
    """Count `key`, or OTHER once `limit` distinct keys are counted: a counter of untrusted
    values (labels, reasons, header formats) must not grow with the dataset."""
    if key in counter or len(counter) < limit or key == OTHER:
        counter[key] += count
    else:
        counter[OTHER] += count


def _sorted_counts(counter: Counter) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def duplicate_line(row: dict[str, Any]) -> bytes | None:
    """The line sorted to find duplicates: image sha256, then [shard, key] as JSON."""
    if row["image_sha256"] is None:
        return None
    where = json.dumps([row["shard"], row["key"]], ensure_ascii=False)
    return f"{row['image_sha256']}\t{where}\n".encode()


@dataclass
class DuplicateSummary:
    groups: int = 0
    images: int = 0  # samples whose image has an identical copy elsewhere
    extra_copies: int = 0  # images - groups: what deduplication would remove
    largest: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "images": self.images,
            "extra_copies": self.extra_copies,
            "largest": self.largest,
        }


def duplicate_groups(sorted_lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Runs of equal hashes in sorted duplicate lines, as {sha256, count, samples}; only runs
    of two or more; at most GROUP_LISTED samples listed, every one counted."""
    current: bytes | None = None
    count = 0
    listed: list[Any] = []

    def group() -> dict[str, Any]:
        return {"sha256": current.decode(), "count": count, "samples": listed}  # type: ignore[union-attr]

    for line in sorted_lines:
        digest, _, where = line.rstrip(b"\n").partition(b"\t")
        if digest != current:
            if count > 1:
                yield group()
            current, count, listed = digest, 0, []
        count += 1
        if len(listed) < GROUP_LISTED:
            listed.append(json.loads(where))
    if count > 1:
        yield group()


def write_duplicates(
    sorted_lines: Iterable[bytes], url: str, options: storage.StorageOptions
) -> DuplicateSummary:
    """Stream the groups to `url` (JSON lines, published atomically); their summary."""
    summary = DuplicateSummary()
    largest: list[tuple[int, str, dict[str, Any]]] = []  # a heap of the LARGEST_GROUPS biggest
    with storage.publish_atomically(url, options) as out:
        for found in duplicate_groups(sorted_lines):
            out.write(json.dumps(found, ensure_ascii=False).encode("utf-8") + b"\n")
            summary.groups += 1
            summary.images += found["count"]
            summary.extra_copies += found["count"] - 1
            quoted = {**found, "samples": found["samples"][:5]}
            entry = (found["count"], _reverse(found["sha256"]), quoted)
            if len(largest) < LARGEST_GROUPS:
                heapq.heappush(largest, entry)
            elif entry[:2] > largest[0][:2]:
                heapq.heapreplace(largest, entry)
    summary.largest = [entry[2] for entry in sorted(largest, key=lambda e: (-e[0], e[2]["sha256"]))]
    return summary


def _reverse(text: str) -> str:
    """Orders hashes backwards, so that among equal counts the heap keeps the smallest hash."""
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


def report_document(
    stats: Stats, duplicates: DuplicateSummary, files: dict[str, Any]
) -> dict[str, Any]:
    counts = stats.to_dict()
    return {
        "format": REPORT_FORMAT,
        "counts": {
            name: counts[name]
            for name in _SCALARS[:7]  # shards ... without_image
        },
        "manifests": {
            "shards": counts["manifests"],
            "read": counts["read"],
            "written": counts["written"],
            "dropped": sum(stats.dropped.values()),
            "failed": sum(stats.failed.values()),
            "dropped_by_reason": counts["dropped"],
            "failed_by_reason": counts["failed"],
        },
        "formats": counts["formats"],
        "histograms": {
            "width": dict(zip(SIDE_BINS, counts["widths"], strict=True)),
            "height": dict(zip(SIDE_BINS, counts["heights"], strict=True)),
            "aspect": dict(zip(ASPECT_BINS, counts["aspects"], strict=True)),
        },
        "labels": {
            "distinct": len(stats.labels),
            "unlabelled": stats.unlabelled,
            "counts": counts["labels"],
        },
        "duplicates": duplicates.to_dict(),
        "files": files,
    }


# Plots -------------------------------------------------------------------------------------

_WIDTH, _HEIGHT = 760, 380
_MARGIN = (64, 44, 24, 78)  # left, top, right, bottom
_COLOURS = ((52, 101, 164), (204, 102, 0))
_INK = (20, 20, 20)
_GRID = (225, 225, 225)


def bar_chart(title: str, categories: list[str], series: list[tuple[str, list[int]]]) -> bytes:
    """A grouped bar chart as PNG bytes: one group per category, one bar per series."""
    image = Image.new("RGB", (_WIDTH, _HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    left, top, right, bottom = _MARGIN
    plot_width, plot_height = _WIDTH - left - right, _HEIGHT - top - bottom
    draw.text((left, 12), title, fill=_INK, font=ImageFont.load_default(size=15))
    highest = max((v for _, values in series for v in values), default=0) or 1
    for step in range(5):
        y = top + plot_height - plot_height * step // 4
        draw.line((left, y, left + plot_width, y), fill=_GRID)
        text = f"{highest * step // 4:,}"
        draw.text((left - 6 - draw.textlength(text, font=font), y - 7), text, fill=_INK, font=font)
    slot = plot_width / max(1, len(categories))
    bar = slot * 0.8 / max(1, len(series))
    for i, category in enumerate(categories):
        for j, (_, values) in enumerate(series):
            x = left + i * slot + slot * 0.1 + j * bar
            height = plot_height * values[i] / highest
            if values[i]:
                draw.rectangle(
                    (x, top + plot_height - max(1.0, height), x + bar - 1, top + plot_height),
                    fill=_COLOURS[j % len(_COLOURS)],
                )
        label = _fit(draw, category, font, max(slot * 2.2, 30))
        _vertical_text(image, (int(left + i * slot + slot / 2), top + plot_height + 4), label, font)
    if len(series) > 1:
        x = left + plot_width
        for j, (name, _) in enumerate(reversed(series)):
            colour = _COLOURS[(len(series) - 1 - j) % len(_COLOURS)]
            x -= draw.textlength(name, font=font) + 24
            draw.rectangle((x, 16, x + 12, 28), fill=colour)
            draw.text((x + 16, 15), name, fill=_INK, font=font)
    draw.line((left, top + plot_height, left + plot_width, top + plot_height), fill=_INK)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _vertical_text(image: Image.Image, at: tuple[int, int], text: str, font: Any) -> None:
    """`text` turned 45° below the axis, centred under x (labels of narrow bars do not overlap)."""
    draw = ImageDraw.Draw(image)
    width = int(draw.textlength(text, font=font)) + 4
    label = Image.new("RGBA", (width, 16), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 1), text, fill=_INK, font=font)
    turned = label.rotate(45, expand=True, resample=Image.Resampling.BICUBIC)
    x, y = at
    image.paste(turned, (x - turned.width + 8, y), turned)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(f"{text}…", font=font) > width:
        text = text[:-1]
    return f"{text}…"


def plots(stats: Stats) -> dict[str, bytes]:
    """Plot name (PLOTS) -> PNG bytes."""
    top = sorted(stats.labels.items(), key=lambda item: (-item[1], item[0]))[:PLOTTED_LABELS]
    shown = (
        f"the {len(top)} most frequent of {len(stats.labels):,}"
        if len(stats.labels) > len(top)
        else f"{len(stats.labels):,} distinct"
    )
    return {
        "sizes": bar_chart(
            f"Image sides, pixels ({stats.images:,} images)",
            list(SIDE_BINS),
            [("width", stats.widths), ("height", stats.heights)],
        ),
        "aspect": bar_chart(
            f"Aspect ratio, width:height ({stats.images:,} images)",
            list(ASPECT_BINS),
            [("images", stats.aspects)],
        ),
        "labels": bar_chart(
            f"Labels ({shown}; {stats.unlabelled:,} samples without a label)",
            [label for label, _ in top],
            [("samples", [count for _, count in top])],
        ),
    }


def write_dataset_report(
    directory: str,
    stats: Stats,
    sorted_duplicates: Iterable[bytes],
    tables: list[str],
    options: storage.StorageOptions,
) -> list[str]:
    """Write the duplicate groups, the plots and the report JSON (last) in `directory`; the
    lines saying what was written."""
    base = directory.rstrip("/") or "."
    _remove_stale_tables(base, tables, options)
    duplicates = write_duplicates(sorted_duplicates, f"{base}/{DUPLICATES_NAME}", options)
    files: dict[str, Any] = {
        "duplicates": DUPLICATES_NAME,
        "tables": [_relative(t, base) for t in tables],
    }
    for name, png in plots(stats).items():
        storage.write_atomically(f"{base}/{PLOTS[name]}", png, options)
        files[name] = PLOTS[name]
    document = report_document(stats, duplicates, files)
    data = json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    storage.write_atomically(f"{base}/{REPORT_NAME}", data, options)
    return [
        f"dataset report: {redact_url(base + '/' + REPORT_NAME)} ({stats.samples} samples, "
        f"{duplicates.groups} groups of duplicate images; plots {', '.join(PLOTS.values())}; "
        f"table {TABLE_DIR}/)"
    ]


def _remove_stale_tables(base: str, tables: list[str], options: storage.StorageOptions) -> None:
    """Table files an earlier run left (batched otherwise): the table is exactly `tables`."""
    kept = {url.rstrip("/").rsplit("/", 1)[-1] for url in tables}
    try:
        names = storage.list_names(f"{base}/{TABLE_DIR}", options)
    except Exception:  # a store that cannot list: nothing to clean, the report lists the parts
        return
    for name in names:
        if _TABLE_PART.fullmatch(name) and name not in kept:
            storage.remove(f"{base}/{TABLE_DIR}/{name}", options)


def _relative(url: str, base: str) -> str:
    return url[len(base) + 1 :] if url.startswith(base + "/") else redact_url(url)
