"""Dataset indexes: every run ends with the wids shard index and sizes.json beside its
outputs (from the manifests, shards not read again), and `shardflow index` writes them, and
DALI's .idx, for anyone's shards from their headers, seeking over member data."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from pathlib import Path

import pytest
import webdataset
import wids_rules
from servers import FileServer
from storage_helpers import shardflow

from shardflow.steps.samples import split_member_name
from shardflow.steps.shard_index import locate
from shardflow.steps.tarlayout import data_offsets

from helpers import good_shard, image_bytes, run_cli, write_tar

LONG_KEY = "k" * 120  # a name longer than 100 bytes gets a GNU long-name header


def sequential_samples(path: Path) -> list[dict[str, bytes]]:
    """Every sample as a sequential read sees it (Python's tarfile, webdataset's grouping)."""
    samples: list[dict[str, bytes]] = []
    last = None
    with tarfile.open(path) as tar:
        for info in tar:
            parts = split_member_name(info.name) if info.isfile() else None
            if parts is None:
                continue
            if parts[0] != last:
                samples.append({"__key__": parts[0]})
                last = parts[0]
            samples[-1][info.name] = tar.extractfile(info).read()
    return samples


def read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as stream:
        stream.seek(offset)
        return stream.read(size)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """Three augmented shards of 3, 5 and 2 samples; one key longer than 100 bytes."""
    counts = (3, 5, 2)
    for number, count in enumerate(counts):
        good_shard(tmp_path / "in" / f"in-{number}.tar", count=count)
    write_tar(  # the middle shard's last sample under a long key
        tmp_path / "in" / "in-1.tar",
        [
            *[
                (name, data)
                for sample in sequential_samples(tmp_path / "in" / "in-1.tar")[:4]
                for name, data in sample.items()
                if name != "__key__"
            ],
            (f"{LONG_KEY}.jpg", image_bytes(seed=9)),
            (f"{LONG_KEY}.json", b'{"cls": 2}'),
        ],
    )
    result = run_cli("augment", tmp_path / "in/in-{0..2}.tar", tmp_path / "out/train-{0..2}.tar")
    assert result.returncode == 0, result.stderr
    assert "index: " in result.stdout
    return tmp_path / "out"


def test_a_run_ends_with_an_index_that_wids_resolves_and_that_locates_every_sample(
    outputs: Path,
) -> None:
    index_path = outputs / "train.shardindex.json"
    document = json.loads(index_path.read_text())
    assert document["__kind__"] == "wids-shard-index-v1" and document["name"] == "train"
    shardlist = wids_rules.resolve(str(index_path))
    shards = [outputs / f"train-{n}.tar" for n in range(3)]
    assert [s["url"] for s in shardlist] == [str(p) for p in shards]
    assert [s["nsamples"] for s in shardlist] == [3, 5, 2]
    assert [s["filesize"] for s in shardlist] == [p.stat().st_size for p in shards]
    assert json.loads((outputs / "sizes.json").read_text()) == {
        "train-0.tar": 3,
        "train-1.tar": 5,
        "train-2.tar": 2,
    }
    manifests = [json.loads(p.with_suffix(".manifest.json").read_text()) for p in shards]
    sequential = [sequential_samples(p) for p in shards]
    everything = [sample for samples in sequential for sample in samples]
    for global_index in [*random.Random(5).sample(range(10), 6), 0, 9, 7]:
        url, inner = wids_rules.get_shard(shardlist, global_index)
        assert locate([3, 5, 2], global_index) == (shards.index(Path(url)), inner)
        # Fetched by byte offset from the manifest's layout, without reading the shard through.
        members = [
            (m["name"], m["size"])
            for s in manifests[shards.index(Path(url))]["samples"]
            for m in s["members"]
        ]
        offsets = dict(zip([n for n, _ in members], data_offsets(members), strict=True))
        sample = manifests[shards.index(Path(url))]["samples"][inner]
        fetched = {
            m["name"]: read_at(Path(url), offsets[m["name"]], m["size"]) for m in sample["members"]
        }
        assert fetched == {k: v for k, v in everything[global_index].items() if k != "__key__"}
    assert any(name.startswith(LONG_KEY) for name in sequential[1][4])


def test_index_of_our_outputs_uses_the_manifests_and_dali_offsets_point_at_member_data(
    outputs: Path,
) -> None:
    result = run_cli("index", outputs / "train-{0..2}.tar", "--dali", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 10 and {s["from"] for s in report["shards"]} == {"manifest"}
    for number in range(3):
        check_dali_index(outputs / f"train-{number}.idx", outputs / f"train-{number}.tar")


def check_dali_index(index: Path, shard: Path) -> None:
    """DALI's v1.2 layout: `v1.2 N`, then per sample `ext offset size name` per member, the
    offset that of the member's data (a multiple of 512); the same samples as a full read."""
    lines = index.read_text().splitlines()
    samples = sequential_samples(shard)
    assert lines[0] == f"v1.2 {len(samples)}" and len(lines) == len(samples) + 1
    for line, sample in zip(lines[1:], samples, strict=True):
        fields = line.split(" ")
        members = {}
        for at in range(0, len(fields), 4):
            extension, offset, size, name = fields[at : at + 4]
            assert int(offset) % 512 == 0
            assert extension == name.rpartition("/")[2].partition(".")[2]
            members[name] = read_at(shard, int(offset), int(size))
        assert members == {k: v for k, v in sample.items() if k != "__key__"}


def third_party_shards(directory: Path) -> list[Path]:
    """A PAX-format shard (float mtimes, a non-ASCII name), one from webdataset's TarWriter,
    one with a directory entry and a member without extension."""
    directory.mkdir()
    pax = directory / "web-0.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        for index, key in enumerate(["a", "ß-b", "c"]):
            for extension, data in (("jpg", image_bytes(seed=index)), ("txt", key.encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime = len(data), 1.5
                tar.addfile(info, io.BytesIO(data))
    with webdataset.TarWriter(str(directory / "web-1.tar")) as writer:
        for index in range(4):
            writer.write(
                {
                    "__key__": f"s{index}",
                    "png": image_bytes(fmt="PNG", seed=index),
                    "cls": str(index).encode(),
                }
            )
    folder = tarfile.TarInfo("d")
    folder.type = tarfile.DIRTYPE
    write_tar(
        directory / "web-2.tar", [folder, ("d/README", b"x"), ("d/x.cls", b"1"), ("d/y.cls", b"2")]
    )
    return [directory / f"web-{n}.tar" for n in range(3)]


def test_index_of_third_party_shards_counts_as_wids_and_dali_read_them(tmp_path: Path) -> None:
    shards = third_party_shards(tmp_path / "web")
    result = run_cli("index", tmp_path / "web/web-{0..2}.tar", "--dali", "--json")
    assert result.returncode == 0, result.stderr
    assert {s["from"] for s in json.loads(result.stdout)["shards"]} == {"headers"}
    shardlist = wids_rules.resolve(str(tmp_path / "web/web.shardindex.json"))
    assert [s["nsamples"] for s in shardlist] == [wids_rules.nsamples(p) for p in shards]
    assert [s["nsamples"] for s in shardlist] == [3, 4, 2]
    for shard in shards:
        check_dali_index(shard.with_suffix(".idx"), shard)


def test_headers_are_read_with_ranges_and_member_data_is_skipped(tmp_path: Path) -> None:
    big = bytes(random.Random(1).randbytes(3_000_000))
    write_tar(
        tmp_path / "site/big-0.tar",
        [(f"{n:04d}.{ext}", big) for n in range(4) for ext in ("bin", "raw")],
    )
    size = (tmp_path / "site/big-0.tar").stat().st_size
    with FileServer(tmp_path / "site") as web:
        result = shardflow(
            "index", f"{web.url}/big-0.tar", "--index", tmp_path / "big.shardindex.json", "--json"
        )
        fetched = 0
        for request in web.requests("GET", path="/big-0.tar"):
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
            assert match, request.headers  # never the whole object
            fetched += int(match[2]) - int(match[1]) + 1
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["shards"][0]["nsamples"] == 4
    assert fetched < size // 2, (fetched, size)  # 24 MB of data, a few 1 MiB blocks read


def test_a_damaged_shard_is_named_and_no_index_is_written(tmp_path: Path) -> None:
    good = good_shard(tmp_path / "s-0.tar", count=2)
    cut = tmp_path / "s-1.tar"
    cut.write_bytes(good.read_bytes()[:3000])
    result = run_cli("index", tmp_path / "s-{0..1}.tar")
    assert result.returncode == 3  # damaged data: a retry would fail the same way
    assert "s-1.tar" in result.stderr and "truncated" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.json"))


def test_a_shard_that_no_longer_matches_its_manifest_is_indexed_from_its_headers(
    outputs: Path,
) -> None:
    shard = outputs / "train-2.tar"
    write_tar(shard, [("x.cls", b"1")])  # replaced behind the manifest's back
    result = run_cli("index", shard, "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["shards"]
    assert (entry["from"], entry["nsamples"]) == ("headers", 1)


def test_verify_writes_the_index_only_when_every_shard_passes(outputs: Path) -> None:
    for path in outputs.glob("*.json"):
        if not path.name.endswith(".manifest.json"):
            path.unlink()
    passed = run_cli("verify", outputs / "train-{0..2}.tar", "--write-index")
    assert passed.returncode == 0, passed.stdout
    assert json.loads((outputs / "train.shardindex.json").read_text())["shardlist"]
    (outputs / "train.shardindex.json").unlink()
    (outputs / "train-1.tar").write_bytes(b"")
    failed = run_cli("verify", outputs / "train-{0..2}.tar", "--write-index")
    assert failed.returncode == 1 and "index: not written" in failed.stdout
    assert not (outputs / "train.shardindex.json").exists()


def test_a_batch_of_a_run_writes_no_index(tmp_path: Path) -> None:
    good_shard(tmp_path / "in-0.tar", count=1)
    good_shard(tmp_path / "in-1.tar", count=1)
    result = run_cli(
        "augment", tmp_path / "in-{0..1}.tar", tmp_path / "out/o-{0..1}.tar", "--task-index", "0"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["o-0.manifest.json", "o-0.tar"]


def test_a_merge_names_a_missing_or_stale_part_and_writes_nothing(tmp_path: Path) -> None:
    for number in range(3):
        good_shard(tmp_path / f"p-{number}.tar", count=1)
    pattern = tmp_path / "p-{0..2}.tar"
    parts = f"{tmp_path}/parts/"
    first = run_cli(
        "index", pattern, "--task-index", "0", "--parts", parts, "--shards-per-task", "2"
    )
    assert first.returncode == 0, first.stderr
    missing = run_cli("index", pattern, "--merge", "--parts", parts, "--shards-per-task", "2")
    assert missing.returncode == 1 and "part-000001.json: missing" in missing.stderr
    stale = run_cli("index", pattern, "--merge", "--parts", parts, "--shards-per-task", "1")
    assert stale.returncode == 1 and "part-000000.json: does not describe batch 0" in stale.stderr
    assert not list(tmp_path.glob("*.json"))
    alone = run_cli("index", pattern, "--parts", parts)
    assert alone.returncode == 2 and "--parts goes with" in alone.stderr
