"""Every kind of bad input, with its expected outcome.

Shard-level damage (truncation, corrupt headers, unsafe names, links, duplicate keys) fails
the shard with one line naming shard, key and cause, publishes nothing, and exits 3 (a data
error: Argo does not retry it); a shard that cannot be read exits 1 (a retry may help). Sample-level
damage (bombs, corrupt images, bad JSON, missing image) costs that sample only and is listed
in the manifest by key.
"""

from __future__ import annotations

import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from helpers import good_shard, image_bytes, run_cli, sample_members, write_tar


def assert_rejected(result, tmp_path: Path, *fragments: str, exit_code: int = 3) -> str:
    """A shard rejected for its content (exit 3 by default, a data error no retry mends): one
    line naming what is wrong, and nothing published at the output, not even a temporary.
    (A storage failure a retry may mend is storage_helpers.assert_retryable.)"""
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "out.tar").exists()
    assert not (tmp_path / "out.manifest.json").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name]
    assert "Traceback" not in result.stderr
    return lines[0]


def member_offsets(path: Path) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member, from Python's tarfile."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return good_shard(tmp_path / "in.tar", count=4)


def augment(tmp_path: Path, source: Path, *extra: str):
    return run_cli("augment", source, tmp_path / "out.tar", *extra)


def test_truncated_at_a_member_boundary(tmp_path: Path, shard: Path) -> None:
    _, header, _ = member_offsets(shard)[4]  # the header of the third sample's jpg
    shard.write_bytes(shard.read_bytes()[:header])
    line = assert_rejected(augment(tmp_path, shard), tmp_path, str(shard), "truncated")
    assert "end-of-archive" in line


def test_truncated_in_the_middle_of_a_member(tmp_path: Path, shard: Path) -> None:
    name, _, data = member_offsets(shard)[2]
    shard.write_bytes(shard.read_bytes()[: data + 100])
    key = name.split(".")[0]
    assert_rejected(augment(tmp_path, shard), tmp_path, str(shard), key, "truncated inside")


def test_corrupt_header_checksum(tmp_path: Path, shard: Path) -> None:
    _, header, _ = member_offsets(shard)[3]
    data = bytearray(shard.read_bytes())
    data[header + 5] ^= 0x20  # a letter of the member name: the checksum no longer matches
    shard.write_bytes(bytes(data))
    assert_rejected(augment(tmp_path, shard), tmp_path, str(shard), "corrupt tar header")


@pytest.mark.parametrize(
    ("name", "cause"),
    [("../escape.jpg", "'..'"), ("/etc/evil.jpg", "absolute"), ("a/../../b.jpg", "'..'")],
)
def test_unsafe_member_names(tmp_path: Path, name: str, cause: str) -> None:
    source = write_tar(
        tmp_path / "in.tar", [*sample_members("ok"), (name, image_bytes()), ("z.json", b"{}")]
    )
    assert_rejected(augment(tmp_path, source), tmp_path, str(source), cause, repr(name))


def test_symlink_member(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link.jpg")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    source = write_tar(tmp_path / "in.tar", [*sample_members("a"), link])
    assert_rejected(
        augment(tmp_path, source), tmp_path, "symbolic link", "not a regular file", "'link'"
    )


def test_non_adjacent_duplicate_key(tmp_path: Path) -> None:
    source = write_tar(
        tmp_path / "in.tar",
        [*sample_members("a"), *sample_members("b"), ("a.txt", b"again")],
    )
    assert_rejected(augment(tmp_path, source), tmp_path, "duplicate key", "key 'a'")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (a decompression bomb's header)."""
    real = image_bytes(8, 8, fmt="PNG")
    ihdr = b"IHDR" + struct.pack(">II", width, height) + real[24:29]
    return real[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + real[33:]


def failed_reasons(tmp_path: Path) -> dict[str, str]:
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    return {entry["key"]: entry["reason"] for entry in manifest["failed"]}


def test_sample_level_damage_costs_only_that_sample(tmp_path: Path) -> None:
    jpeg = image_bytes(120, 90)
    source = write_tar(
        tmp_path / "in.tar",
        [
            *sample_members("good1"),
            ("bomb.png", png_declaring(20000, 20000)),
            ("bomb.json", b'{"cls": 1}'),
            ("cut.jpg", jpeg[: len(jpeg) // 2]),
            ("cut.json", b'{"cls": 1}'),
            *sample_members("badjson")[:1],
            ("badjson.json", b'{"cls": 1,'),
            ("noimage.json", b'{"cls": 1}'),
            ("nolabel.jpg", jpeg),
            ("nolabel.json", b'{"other": 3}'),
            ("notjpeg.jpg", b"this is not an image"),
            ("notjpeg.json", b'{"cls": 1}'),
            *sample_members("good2"),
        ],
    )
    result = augment(tmp_path, source, "--max-failed", "1")
    assert result.returncode == 0, result.stderr
    reasons = failed_reasons(tmp_path)
    assert set(reasons) == {"bomb", "cut", "badjson", "noimage", "nolabel", "notjpeg"}
    assert "20000x20000" in reasons["bomb"] and "Mpx" in reasons["bomb"]
    assert "corrupt" in reasons["cut"] or "truncated" in reasons["cut"]
    assert "not valid JSON" in reasons["badjson"]
    assert "no image" in reasons["noimage"]
    assert "'cls'" in reasons["nolabel"]
    assert "not a valid JPEG" in reasons["notjpeg"]
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert tar.getnames() == ["good1.png", "good1.cls", "good2.png", "good2.cls"]
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["counts"] == {"read": 8, "written": 2, "dropped": 0, "failed": 6}


def test_on_error_fail_fails_the_shard_naming_the_key(tmp_path: Path) -> None:
    source = write_tar(
        tmp_path / "in.tar",
        [*sample_members("good"), ("broken.jpg", b"garbage"), ("broken.json", b'{"cls": 1}')],
    )
    result = augment(tmp_path, source, "--on-error", "fail")
    assert_rejected(result, tmp_path, str(source), "key 'broken'", "--on-error fail")


def test_max_mpx_is_configurable(tmp_path: Path) -> None:
    members = [*sample_members("a", width=400, height=300), *sample_members("b")]
    source = write_tar(tmp_path / "in.tar", members)
    assert augment(tmp_path, source, "--max-mpx", "0.1", "--max-failed", "1").returncode == 0
    assert "0.1 Mpx" in failed_reasons(tmp_path)["a"]


class Detonator:
    """Unpickling this creates a file: proof that a shard could run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Detonator(str(marker)))
    members = [*sample_members("a"), ("a.pyd", payload), ("a.pth", payload)]
    source = write_tar(tmp_path / "in.tar", members)
    for recipe in ("seed", "flip-crop"):  # flip-crop passes unknown members through as bytes
        result = run_cli("augment", source, tmp_path / f"{recipe}.tar", "--recipe", recipe)
        assert result.returncode == 0, result.stderr
    assert not marker.exists()
    with tarfile.open(tmp_path / "flip-crop.tar") as tar:
        assert tar.extractfile("a.pyd").read() == payload  # carried, never interpreted


def test_unreadable_input_is_a_shard_error(tmp_path: Path) -> None:
    result = augment(tmp_path, tmp_path / "missing.tar")
    assert_rejected(result, tmp_path, "missing.tar", "does not exist", exit_code=1)


def test_a_bad_shard_does_not_stop_the_batch(tmp_path: Path) -> None:
    good_shard(tmp_path / "in-0.tar", count=2)
    (tmp_path / "in-1.tar").write_bytes(b"not a tar at all" * 100)
    good_shard(tmp_path / "in-2.tar", count=2)
    result = run_cli("augment", tmp_path / "in-{0..2}.tar", tmp_path / "out-{0..2}.tar")
    assert result.returncode == 3  # the only failure is damaged data
    assert [line for line in result.stderr.splitlines() if "in-1.tar" in line]
    assert (tmp_path / "out-0.tar").exists() and (tmp_path / "out-2.tar").exists()
    assert not (tmp_path / "out-1.tar").exists()
    assert not (tmp_path / "out-1.manifest.json").exists()


def test_a_batch_exits_1_when_any_failure_may_pass_on_a_retry(tmp_path: Path) -> None:
    """Damaged data alone is exit 3 (never retried); with a read failure beside it, exit 1 so
    Argo retries, and the retry redoes only the shards without output (--skip-existing)."""
    (tmp_path / "in-1.tar").write_bytes(b"not a tar at all" * 100)
    good_shard(tmp_path / "in-2.tar", count=2)
    result = run_cli("augment", tmp_path / "in-{0..2}.tar", tmp_path / "out-{0..2}.tar")
    assert result.returncode == 1, result.stderr
    assert [line for line in result.stderr.splitlines() if "in-0.tar" in line]
    assert (tmp_path / "out-2.tar").exists()
