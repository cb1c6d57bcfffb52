"""The per-sample table and the dataset report (`shardflow report`, `verify --dataset-report`)
on real tar files: shards written by Python's tarfile and by webdataset's TarWriter, real
PNG/JPEG/WebP images, duplicates across shards."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import pytest
import webdataset
from PIL import Image

from shardflow.steps import dataset_report, sample_table, spool_sort
from shardflow.steps.sample_table import image_header

from helpers import image_bytes, run_cli, write_tar

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def third_party(tmp_path: Path) -> dict[str, bytes]:
    """Two shards by tarfile, one by webdataset's TarWriter; `shared` is in two of them."""
    shared = image_bytes(120, 40, "PNG", seed=7)
    images = {
        "a0": image_bytes(64, 48, "JPEG", seed=1),
        "a1": shared,
        "b0": image_bytes(300, 300, "WEBP", seed=2),
        "b1": shared,
        "c0": image_bytes(33, 700, "PNG", seed=3),
        "c1": image_bytes(64, 48, "JPEG", seed=1),  # same bytes as a0
    }
    write_tar(
        tmp_path / "d" / "shard-0.tar",
        [
            ("a0.jpg", images["a0"]),
            ("a0.cls", b"3\n"),
            ("a1.png", images["a1"]),
            ("a1.cls", b"4"),
            ("a2.txt", b"no image here"),
        ],
    )
    write_tar(
        tmp_path / "d" / "shard-1.tar",
        [("b0.webp", images["b0"]), ("b0.cls", b"3"), ("b1.png", images["b1"])],
    )
    with webdataset.TarWriter(str(tmp_path / "d" / "shard-2.tar")) as writer:
        writer.write({"__key__": "c0", "png": images["c0"], "cls": b"5"})
        writer.write({"__key__": "c1", "jpg": images["c1"], "cls": b"3"})
    return images


def test_report_of_third_party_shards(tmp_path: Path, third_party: dict[str, bytes]) -> None:
    result = run_cli("report", tmp_path / "d" / "shard-{0..2}.tar", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "r"
    rows = [
        json.loads(line)
        for line in (out / "dataset-samples" / "part-000000.jsonl").read_text().splitlines()
    ]
    assert [r["key"] for r in rows] == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]
    by_key = {r["key"]: r for r in rows}
    assert set(rows[0]) == set(sample_table.COLUMNS)
    assert by_key["a0"]["shard"] == str(tmp_path / "d" / "shard-0.tar")
    assert (by_key["a0"]["format"], by_key["a0"]["width"], by_key["a0"]["height"]) == (
        "JPEG",
        64,
        48,
    )
    assert (by_key["b0"]["format"], by_key["b0"]["width"]) == ("WEBP", 300)
    assert (by_key["c0"]["image"], by_key["c0"]["width"], by_key["c0"]["height"]) == (
        "png",
        33,
        700,
    )
    assert by_key["a0"]["label"] == "3" and by_key["b1"]["label"] is None
    assert by_key["a2"]["image"] is None and by_key["a2"]["width"] is None
    assert by_key["a2"]["members"] == [{"ext": "txt", "size": 13, "sha256": _sha(b"no image here")}]
    for key, data in third_party.items():
        assert by_key[key]["image_sha256"] == _sha(data)
    assert by_key["a0"]["members"][1] == {"ext": "cls", "size": 2, "sha256": _sha(b"3\n")}

    report = json.loads((out / "dataset-report.json").read_text())
    assert report["counts"]["shards"] == 3
    assert report["counts"]["samples"] == 7
    assert report["counts"]["images"] == 6 and report["counts"]["without_image"] == 1
    assert report["formats"] == {"PNG": 3, "JPEG": 2, "WEBP": 1}
    assert report["labels"]["counts"] == {"3": 3, "4": 1, "5": 1}
    assert report["labels"]["unlabelled"] == 2
    assert report["histograms"]["width"]["32-63"] == 1  # c0: 33 pixels wide
    assert report["histograms"]["height"]["512-1023"] == 1  # c0: 700 high
    assert report["histograms"]["aspect"]["~1:1"] == 1  # b0
    assert report["histograms"]["aspect"][">=4:1"] == 0
    assert report["histograms"]["aspect"]["2:1-4:1"] == 2  # 120x40, twice
    assert report["manifests"]["shards"] == 0  # not ours: no drops to tell
    duplicates = report["duplicates"]
    assert (duplicates["groups"], duplicates["images"], duplicates["extra_copies"]) == (2, 4, 2)
    groups = [
        json.loads(line) for line in (out / "dataset-duplicates.jsonl").read_text().splitlines()
    ]
    assert sorted((g["sha256"], g["count"]) for g in groups) == sorted(
        [(_sha(third_party["a1"]), 2), (_sha(third_party["a0"]), 2)]
    )
    shared = next(g for g in groups if g["sha256"] == _sha(third_party["a1"]))
    assert shared["samples"] == [
        [str(tmp_path / "d" / "shard-0.tar"), "a1"],
        [str(tmp_path / "d" / "shard-1.tar"), "b1"],
    ]
    for name in dataset_report.PLOTS.values():
        with Image.open(out / name) as plot:
            assert plot.format == "PNG" and plot.width > 300


def test_a_table_left_by_an_earlier_run_in_more_batches_is_replaced(tmp_path: Path) -> None:
    write_tar(tmp_path / "s.tar", [("k.png", image_bytes(10, 10, "PNG"))])
    stale = tmp_path / "dataset-samples" / "part-000001.jsonl"
    stale.parent.mkdir()
    stale.write_text('{"key": "old"}\n')
    (tmp_path / "dataset-samples" / "notes.txt").write_text("not ours")
    assert run_cli("report", tmp_path / "s.tar").returncode == 0  # --out: the shard's folder
    names = sorted(p.name for p in stale.parent.iterdir())
    assert "part-000001.jsonl" not in names and "notes.txt" in names
    assert "part-000000.jsonl" in names


def test_a_damaged_shard_is_named_and_the_rest_reported(tmp_path: Path) -> None:
    png = image_bytes(10, 10, "PNG")
    good = write_tar(tmp_path / "s-0.tar", [("k.png", png)])
    cut = good.read_bytes()[: 512 + len(png) // 2]  # inside the image's data
    (tmp_path / "s-1.tar").write_bytes(cut)
    result = run_cli("report", tmp_path / "s-{0..1}.tar", "--out", tmp_path / "r")
    assert result.returncode == 1
    assert "s-1.tar" in result.stderr and "truncated" in result.stderr
    report = json.loads((tmp_path / "r" / "dataset-report.json").read_text())
    assert report["counts"]["samples"] == 1


def test_report_refuses_to_write_over_a_shard(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "dataset-report.json", [("k.png", image_bytes(10, 10, "PNG"))])
    result = run_cli("report", shard, "--out", tmp_path)
    assert result.returncode == 2 and "both an input and an output" in result.stderr


def test_image_header_reads_sizes_without_pixels_and_within_its_bound() -> None:
    png = image_bytes(50, 20, "PNG")
    assert image_header(png[:64], "png") == ("PNG", 50, 20)  # IHDR alone is enough
    assert image_header(b"not an image", "png") is None
    assert image_header(png, "jpg") is None  # restricted to the extension's format
    # A JPEG whose frame header lies beyond the bytes kept: no size, no unbounded read.
    jpeg = image_bytes(40, 30, "JPEG")
    filler = b"\xff\xe1" + struct.pack(">H", 65535) + b"\0" * 65533
    padded = jpeg[:2] + filler * 5 + jpeg[2:]
    with Image.open(io.BytesIO(padded)) as image:
        assert image.size == (40, 30)  # a valid JPEG
    assert image_header(padded, "jpg") == ("JPEG", 40, 30)
    assert image_header(padded[: sample_table.HEAD_BYTES], "jpg") is None


def test_a_huge_declared_image_is_sized_from_its_header(tmp_path: Path) -> None:
    """A 17 kB PNG may declare 400 Mpx: the table reports it, nothing is decoded."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")
    write_tar(tmp_path / "s.tar", [("big.png", buffer.getvalue())])
    result = run_cli("report", tmp_path / "s.tar", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "r" / "dataset-samples" / "part-000000.jsonl").read_text())
    assert (row["width"], row["height"]) == (20000, 20000)


def test_sorted_spool_sorts_beyond_memory_and_merges_with_a_bounded_fan_in() -> None:
    lines = [f"{(i * 7919) % 1000:04d}\t{i}\n".encode() for i in range(1000)]
    spool = spool_sort.SortedSpool(run_lines=37)  # 28 runs on disk
    for line in lines:
        spool.add(line)
    assert list(spool.sorted_lines()) == sorted(lines)
    spool.close()
    sources = [spool_sort.SortedSpool() for _ in range(9)]
    for index, line in enumerate(lines):
        sources[index % 9].add(line)
    merged = list(spool_sort.merge_sorted([s.opener() for s in sources], fan_in=2))
    assert merged == sorted(lines)


def test_duplicate_groups_count_all_and_list_a_bounded_number() -> None:
    lines = sorted(
        [f"{'a' * 64}\t{json.dumps(['s', str(i)])}\n".encode() for i in range(150)]
        + [f"{'b' * 64}\t{json.dumps(['s', 'x'])}\n".encode()]
    )
    groups = list(dataset_report.duplicate_groups(lines))
    assert len(groups) == 1 and groups[0]["count"] == 150
    assert len(groups[0]["samples"]) == dataset_report.GROUP_LISTED


def test_stats_add_up_whatever_the_batches() -> None:
    rows = [
        {
            "members": [{"size": 10}],
            "image": "png",
            "width": w,
            "height": h,
            "format": "PNG",
            "label": str(w % 3),
        }
        for w, h in [(10, 10), (100, 30), (4000, 1000), (31, 300), (64, 64)]
    ]
    whole = dataset_report.Stats()
    for row in rows:
        whole.add_row(row)
    first, second = dataset_report.Stats(), dataset_report.Stats()
    for row in rows[:2]:
        first.add_row(row)
    for row in rows[2:]:
        second.add_row(row)
    first.merge(second)
    assert first.to_dict() == whole.to_dict()
    assert dataset_report.Stats.from_dict(whole.to_dict()).to_dict() == whole.to_dict()
    assert dataset_report.aspect_bin(4000, 1000) == len(dataset_report.ASPECT_BINS) - 1  # >=4:1
    assert dataset_report.aspect_bin(10, 9) == dataset_report.ASPECT_BINS.index("10:9-3:2")


def test_counters_of_untrusted_text_stay_bounded() -> None:
    stats = dataset_report.Stats()
    reasons = [{"key": "k", "reason": f"bad {chr(0x4E00 + i)}"} for i in range(1500)]
    stats.add_manifest({"counts": {"read": 1500, "written": 0}, "dropped": reasons})
    assert len(stats.dropped) == dataset_report.MAX_REASONS + 1
    assert stats.dropped[dataset_report.OTHER] == 1500 - dataset_report.MAX_REASONS
    merged = dataset_report.Stats()
    merged.merge(stats)
    merged.merge(stats)
    assert sum(merged.dropped.values()) == 3000 and len(merged.dropped) <= 1001


def test_drops_are_counted_by_reason_from_the_manifests(tmp_path: Path) -> None:
    """A run that drops samples: the report counts them by reason, numbers left out."""
    shards = []
    for index in range(2):
        members = []
        for sample in range(4):
            side = 16 if sample % 2 else 64
            members.append((f"s{index}{sample}.jpg", image_bytes(side, side, seed=sample)))
            members.append((f"s{index}{sample}.json", b'{"cls": 1}'))
        shards.append(write_tar(tmp_path / "in" / f"in-{index}.tar", members))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "ops:\n  - image: {from: jpg}\n  - filter: {min_width: 32}\n  - label: {}\n"
        "  - encode: {members: {png: image, cls: cls}}\n"
    )
    result = run_cli(
        "augment",
        tmp_path / "in" / "in-{0..1}.tar",
        tmp_path / "out" / "out-{0..1}.tar",
        "--recipe",
        recipe,
    )
    assert result.returncode == 0, result.stderr
    result = run_cli(
        "verify", tmp_path / "out" / "out-{0..1}.tar", "--dataset-report", tmp_path / "out"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "dataset-report.json").read_text())
    assert report["manifests"]["read"] == 8 and report["manifests"]["dropped"] == 4
    [(reason, count)] = report["manifests"]["dropped_by_reason"].items()
    assert count == 4 and "N" in reason and "16" not in reason
    assert report["counts"]["samples"] == 4


@pytest.mark.skipif(not sample_table.parquet_available(), reason="the parquet extra")
def test_parquet_table_has_the_documented_columns(tmp_path: Path, third_party) -> None:
    import pyarrow.parquet as pq

    result = run_cli("report", tmp_path / "d" / "shard-{0..2}.tar", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "r" / "dataset-samples" / "part-000000.parquet")
    assert tuple(table.column_names) == sample_table.COLUMNS
    jsonl = (tmp_path / "r" / "dataset-samples" / "part-000000.jsonl").read_text().splitlines()
    assert table.to_pylist() == [json.loads(line) for line in jsonl]


def test_a_repeated_member_keeps_one_head_and_the_first_image(tmp_path: Path) -> None:
    first, second = image_bytes(10, 12, "PNG", seed=1), image_bytes(20, 22, "PNG", seed=2)
    write_tar(tmp_path / "s.tar", [("k.png", first), ("k.png", second), ("k.cls", b"2")])
    result = run_cli("report", tmp_path / "s.tar", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "r" / "dataset-samples" / "part-000000.jsonl").read_text())
    assert [m["sha256"] for m in row["members"]] == [_sha(first), _sha(second), _sha(b"2")]
    assert (row["image_sha256"], row["width"], row["height"]) == (_sha(first), 10, 12)
