"""The verify checks as functions, in process: streaming with bounded reads, the manifest
comparisons, the sample sheet."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from shardflow.steps.augment import AugmentOptions, augment_shard
from shardflow.steps.contact_sheet import (
    BACKGROUND,
    PLACEHOLDER,
    TILE,
    SheetRow,
    choose_shards,
    make_tile,
    render_sheet,
    sheet_size,
    tile_box,
    wanted_extension,
)
from shardflow.steps.manifest import manifest_url
from shardflow.steps.pipeline import Pipeline
from shardflow.steps.recipe import load_recipe
from shardflow.steps.storage import comparable_url
from shardflow.steps.tar_writer import TarWriter
from shardflow.steps.verify import (
    KeptSample,
    Problem,
    ShardReport,
    list_archive,
    member_difference,
    verify_shard,
)
from shardflow.steps.verify_report import format_table

from helpers import good_shard


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """One shard augmented in process with the seed recipe (png + cls), and its manifest."""
    source = good_shard(tmp_path / "in.tar", count=5)
    pipeline = Pipeline(load_recipe("seed"), max_pixels=10**7, allowed_plugins=())
    result = augment_shard(str(source), str(tmp_path / "out.tar"), pipeline, AugmentOptions())
    assert result.status == "written", result.error
    return tmp_path / "out.tar"


def edit_manifest(shard: Path, change) -> None:
    path = Path(manifest_url(str(shard)))
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


class RecordingStream(io.BytesIO):
    largest_read = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.largest_read = max(self.largest_read, len(data))
        return data


def test_member_data_is_streamed_in_bounded_reads_never_held(tmp_path: Path):
    buffer = io.BytesIO()
    writer = TarWriter(buffer)
    writer.add("a.bin", os.urandom(3 << 20))
    writer.add("a.cls", b"1")
    size, sha256 = writer.close()
    stream = RecordingStream(buffer.getvalue())
    listing = list_archive(stream)
    assert [(m.name, m.size) for m in listing.members] == [("a.bin", 3 << 20), ("a.cls", 1)]
    assert (listing.size, listing.sha256, listing.damage) == (size, sha256, None)
    assert stream.largest_read <= 1 << 20


def test_only_the_first_samples_wanted_members_are_kept(output: Path):
    with open(output, "rb") as stream:
        listing = list_archive(stream, keep_samples=2, keep=lambda ext: ext == "cls")
    assert listing.sha256 == hashlib.sha256(output.read_bytes()).hexdigest()
    keys = [m.name.split(".")[0] for m in listing.members[::2]]
    assert [k.key for k in listing.kept] == keys[:2]
    assert all(list(k.members) == ["cls"] for k in listing.kept)


def test_a_clean_shard_has_no_problems(output: Path):
    report = verify_shard(str(output), {})
    assert (report.status, report.problems, report.samples, report.members) == ("ok", [], 5, 10)


def test_counts_that_do_not_add_up(output: Path):
    edit_manifest(output, lambda m: m["counts"].update(read=9))
    problems = verify_shard(str(output), {}).problems
    assert [str(p) for p in problems] == [
        "counts do not add up: read 9, but written 5 + dropped 0 + failed 0 = 5"
    ]


def test_a_manifest_that_is_not_one(output: Path):
    Path(manifest_url(str(output))).write_text("{not json")
    report = verify_shard(str(output), {})
    assert report.status == "failed"
    assert report.problems[0].kind == "manifest"
    assert "not valid JSON" in report.problems[0].message
    wrong = {"format": "shardflow.manifest/1", "output_size": "big"}
    Path(manifest_url(str(output))).write_text(json.dumps(wrong))
    message = str(verify_shard(str(output), {}).problems[0])
    assert message == "manifest is not valid: output_size is not a byte count"


def test_a_resized_member_in_the_manifest(output: Path):
    edit_manifest(output, lambda m: m["samples"][1]["members"][1].update(size=7))
    name = json.loads(Path(manifest_url(str(output))).read_text())["samples"][1]["members"][1]
    problems = [str(p) for p in verify_shard(str(output), {}).problems]
    assert problems == [
        f"member list differs from the manifest: {name['name']!r} has 1 bytes, not 7"
    ]


def test_member_difference_names_order_and_repeats():
    recorded = [("a.png", 1), ("a.cls", 1), ("b.png", 2)]
    assert member_difference(recorded, recorded) == ""
    swapped = [recorded[1], recorded[0], recorded[2]]
    assert member_difference(swapped, recorded) == "order differs at 'a.cls'"
    repeated = [*recorded, ("a.png", 1)]
    assert member_difference(repeated, recorded) == "'a.png' appears 2 times, 1 in the manifest"
    names = [(f"k{i}.png", 1) for i in range(5)]
    assert member_difference([], names) == "missing 'k0.png', 'k1.png', 'k2.png' (+2 more)"


def test_local_urls_compare_as_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "in" / "x.tar")
    assert comparable_url("in/x.tar") == comparable_url("./in/x.tar") == absolute
    assert comparable_url(f"file://{absolute}") == absolute
    assert comparable_url("s3://bucket/in/x.tar") == "s3://bucket/in/x.tar"


def test_choose_shards_spreads_over_the_set():
    assert choose_shards(10, 4) == [0, 3, 6, 9]
    assert choose_shards(3, 5) == [0, 1, 2]
    assert choose_shards(7, 1) == [0]
    assert choose_shards(7, 0) == []


def test_tiles_are_thumbnails_labelled_with_the_class(output: Path):
    with open(output, "rb") as stream:
        kept = list_archive(stream, keep_samples=1, keep=wanted_extension).kept[0]
    tile = make_tile(kept, max_pixels=10**7)
    manifest = json.loads(Path(manifest_url(str(output))).read_text())
    assert tile.key == manifest["samples"][0]["key"]
    assert tile.label == f"cls {kept.members['cls'].decode()}"
    assert tile.thumbnail is not None and tile.thumbnail.size == (64, 48)
    broken = make_tile(KeptSample("k", {"png": b"\x89PNG nope", "cls": b"2"}), max_pixels=10**7)
    assert broken.thumbnail is None and broken.label.startswith("cls 2, bad image")
    bomb = io.BytesIO()
    Image.new("L", (400, 300)).save(bomb, "PNG")
    limited = make_tile(KeptSample("b", {"png": bomb.getvalue()}), max_pixels=1000)
    assert limited.thumbnail is None and "above the limit" in limited.label


def test_the_sheet_has_one_row_per_shard_and_a_tile_per_sample(output: Path):
    with open(output, "rb") as stream:
        kept = list_archive(stream, keep_samples=3, keep=wanted_extension).kept
    tiles = [make_tile(sample, max_pixels=10**7) for sample in kept]
    rows = [
        SheetRow("a.tar", tiles),
        SheetRow("b.tar", [*tiles[:2], make_tile(KeptSample("x"), max_pixels=1)]),
    ]
    sheet = Image.open(io.BytesIO(render_sheet(rows)))
    assert sheet.format == "PNG"
    assert sheet.size == sheet_size(rows)
    for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        colours = sheet.crop(tile_box(r, c)).getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # image content, not a flat fill
    placeholder = sheet.crop(tile_box(1, 2)).getcolors()
    assert placeholder == [(TILE * TILE, PLACEHOLDER)]
    empty = Image.open(io.BytesIO(render_sheet([])))
    assert empty.getpixel((empty.width - 1, empty.height - 1)) == BACKGROUND


def test_a_long_table_lists_only_the_shards_with_problems() -> None:
    reports = [ShardReport(f"out-{i:06d}.tar", samples=3) for i in range(60)]
    reports[7].problems.append(Problem("incomplete", "no manifest: the shard is incomplete"))
    short = format_table(reports, passing_rows_up_to=50).splitlines()
    assert len(short) == 3  # header, the failing shard, the count of the others
    assert "out-000007.tar" in short[1] and "incomplete" in short[1]
    assert short[2] == "(59 passing shards not listed; --all-rows lists them)"
    assert len(format_table(reports).splitlines()) == 61
    assert len(format_table(reports[:50], passing_rows_up_to=50).splitlines()) == 51
