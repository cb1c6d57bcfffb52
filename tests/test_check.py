"""`shardflow check`: every problem of third-party shards (Python's tarfile in PAX format,
webdataset's TarWriter), reported in one pass; `--repair` rewrites the fixable ones, never
publishes a half-written or unfixable one."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import webdataset

from helpers import good_shard, image_bytes, run_cli, write_tar


def add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def messy_shard(path: Path) -> Path:
    """PAX headers, a split key, an upper-case extension, an empty member, a member without
    extension, a dotted base name, a sample without json, and trailing garbage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key in ("a", "b"):
            add(tar, f"{key}.jpg", image_bytes(seed=len(key)), mtime=1.5)  # float: PAX
            add(tar, f"{key}.json", b'{"cls": 1}')
        add(tar, "a.txt", b"comes back")
        add(tar, "c.JPG", image_bytes(seed=3))
        add(tar, "c.json", b"")
        add(tar, "img.v2.jpg", image_bytes(seed=4))
        add(tar, "img.v2.json", b"{}")
        add(tar, "README", b"read me")
    with path.open("ab") as stream:
        stream.write(b"garbage!" * 100)
    return path


def unsafe_shard(path: Path) -> Path:
    link = tarfile.TarInfo("e.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return write_tar(path, [("d.jpg", b"j"), ("d.json", b"{}"), link, ("../x.json", b"{}")])


def kinds(shard: dict) -> set[str]:
    return {problem["kind"] for problem in shard["problems"]}


def check_json(*args) -> tuple[int, dict]:
    result = run_cli("check", *args, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_every_problem_of_a_shard_is_reported_not_only_the_first(tmp_path: Path) -> None:
    messy_shard(tmp_path / "d-0.tar")
    good_shard(tmp_path / "d-1.tar", count=4)
    code, report = check_json(tmp_path / "d-{0..1}.tar")
    assert code == 1 and not report["passed"]
    messy, good = report["shards"]
    assert kinds(messy) == {
        "pax",
        "split",
        "case",
        "empty",
        "noext",
        "trailing",
        "dotted",
        "fields",
    }
    assert (good["status"], good["problems"], good["samples"]) == ("ok", [], 4)
    text = json.dumps(messy["problems"])
    assert "'a'" in text and "'README'" in text and "img" in text and "'c.JPG'" in text
    table = run_cli("check", tmp_path / "d-{0..1}.tar")
    assert table.returncode == 1
    assert "d-0.tar" in table.stdout and "check: FAILED: 1 of 2 shards" in table.stdout


def test_damage_links_and_unsafe_names_are_reported_with_what_came_before(tmp_path: Path) -> None:
    unsafe_shard(tmp_path / "u-0.tar")
    whole = good_shard(tmp_path / "u-1.tar", count=3).read_bytes()
    (tmp_path / "u-1.tar").write_bytes(whole[: len(whole) * 6 // 10])  # cut mid-archive
    damaged = bytearray(whole)
    second_header = 512 + len(image_bytes(seed=0)) + (-len(image_bytes(seed=0)) % 512)
    damaged[second_header + 10] ^= 0xFF  # a name byte: the header's checksum no longer holds
    (tmp_path / "u-2.tar").write_bytes(bytes(damaged))
    code, report = check_json(tmp_path / "u-{0..2}.tar")
    assert code == 1
    unsafe, cut, corrupt = report["shards"]
    assert kinds(unsafe) == {"links", "names"}
    assert "truncated" in kinds(cut) and cut["samples"] >= 1
    assert "corrupt" in kinds(corrupt)
    assert "checksum" in json.dumps(corrupt["problems"]) and corrupt["members"] == 1


def test_fields_are_compared_with_the_whole_dataset(tmp_path: Path) -> None:
    good_shard(tmp_path / "f-0.tar", count=3)
    good_shard(tmp_path / "f-1.tar", count=3)
    write_tar(tmp_path / "f-2.tar", [(f"{n}.jpg", image_bytes(seed=n)) for n in range(3)])
    code, report = check_json(tmp_path / "f-{0..2}.tar")
    assert code == 1
    assert [kinds(s) for s in report["shards"]] == [set(), set(), {"fields"}]
    assert "3 of 3 samples" in report["shards"][2]["problems"][0]["message"]


def test_webdataset_tarwriter_shards_have_pax_headers_and_repair_removes_them(
    tmp_path: Path,
) -> None:
    shard = tmp_path / "w-0.tar"
    with webdataset.TarWriter(str(shard)) as writer:  # default float mtime: PAX headers
        for index in range(3):
            writer.write({"__key__": f"s{index}", "jpg": image_bytes(seed=index), "cls": b"1"})
    code, report = check_json(shard)
    assert code == 1 and kinds(report["shards"][0]) == {"pax"}
    repaired = run_cli("check", shard, "--repair", tmp_path / "fixed/w-0.tar")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    code, again = check_json(tmp_path / "fixed/w-0.tar")
    assert code == 0 and again["shards"][0]["samples"] == 3


def test_repair_groups_split_keys_drops_trailing_data_and_passes_verify(tmp_path: Path) -> None:
    source = messy_shard(tmp_path / "in/m-0.tar")
    good_shard(tmp_path / "in/m-1.tar", count=2)
    unsafe_shard(tmp_path / "in/m-2.tar")
    result = run_cli("check", tmp_path / "in/m-{0..2}.tar", "--repair", f"{tmp_path}/out/")
    assert result.returncode == 1  # m-2 cannot be repaired
    assert "not repaired: " in result.stdout and "m-2.tar: links, names" in result.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "m-0.manifest.json",
        "m-0.tar",
        "m-1.manifest.json",
        "m-1.tar",
    ]
    verified = run_cli("verify", out / "m-{0..1}.tar", "--inputs", tmp_path / "in/m-{0..1}.tar")
    assert verified.returncode == 0, verified.stdout
    with tarfile.open(out / "m-0.tar") as tar:
        names = tar.getnames()
        repaired = {name: tar.extractfile(name).read() for name in names}
        assert not any(member.pax_headers for member in tar.getmembers())
    assert names[:3] == ["a.jpg", "a.json", "a.txt"]  # the split sample, whole
    with tarfile.open(source, ignore_zeros=False) as tar:
        original = {
            m.name.replace(".JPG", ".jpg"): tar.extractfile(m).read()
            for m in tar
            if m.name != "README"
        }
    assert repaired == original
    manifest = json.loads((out / "m-0.manifest.json").read_text())
    assert manifest["ignored_members"] == ["README"] and manifest["counts"]["written"] == 4
    _, after = check_json(out / "m-0.tar")
    assert kinds(after["shards"][0]) == {"empty", "dotted", "fields"}  # left as they are


def test_repair_refuses_to_write_over_its_input_and_a_missing_shard_is_reported(
    tmp_path: Path,
) -> None:
    good_shard(tmp_path / "r-0.tar", count=1)
    in_place = run_cli("check", tmp_path / "r-0.tar", "--repair", tmp_path / "r-0.tar")
    assert in_place.returncode == 2 and "both an input and an output" in in_place.stderr
    code, report = check_json(tmp_path / "r-{0..1}.tar")
    assert code == 1
    assert [s["status"] for s in report["shards"]] == ["ok", "missing"]
