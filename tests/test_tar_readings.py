"""Archives that Python's tarfile (and so webdataset) reads differently from a naive reader:
shardflow must agree with it or refuse the shard with one line, never differ silently. Each
test shows tarfile's reading, then shardflow's verdict."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from helpers import run_cli, sample_members

END = bytes(1024)


def member_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The members' headers and data as tarfile writes them, without the end blocks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        end = tar.offset
    return buffer.getvalue()[:end]


def header(name: str, type_: bytes, size: int = 0, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.size = size
    return info.tobuf(fmt)


def pax_header(type_: bytes, records: dict[str, str]) -> bytes:
    payload = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + 1
        length = len(str(length + len(str(length)) - 1)) + len(record)
        payload += str(length).encode() + record
    return header("././@PaxHeader", type_, len(payload)) + payload + bytes(-len(payload) % 512)


def tarfile_names(path: Path) -> list[str] | str:
    try:
        with tarfile.open(path) as tar:
            return [m.name for m in tar.getmembers()]
    except tarfile.TarError as exc:
        return f"error: {exc}"


def augment_fails(tmp_path: Path, shard: Path, *words: str) -> None:
    result = run_cli("augment", shard, tmp_path / "out.tar")
    assert result.returncode == 3, result.stderr  # damaged data: not retried
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in (str(shard), *words):
        assert word in lines[0], lines[0]
    assert not (tmp_path / "out.tar").exists()


def test_a_directory_entry_with_a_size_is_refused(tmp_path: Path) -> None:
    """tarfile reads the two samples inside the directory's "data"; skipping it would hide
    them."""
    hidden = member_bytes(sample_members("b") + sample_members("c"))
    shard = tmp_path / "in.tar"
    shard.write_bytes(
        member_bytes(sample_members("a"))
        + header("d/", tarfile.DIRTYPE, size=len(hidden))
        + hidden
        + member_bytes(sample_members("e"))
        + END
    )
    names = tarfile_names(shard)
    assert "b.jpg" in names and "c.json" in names
    augment_fails(tmp_path, shard, "a directory 'd'", f"declares {len(hidden)} bytes")


def test_a_global_pax_path_is_refused(tmp_path: Path) -> None:
    """tarfile gives every member after it that name."""
    shard = tmp_path / "in.tar"
    shard.write_bytes(
        pax_header(tarfile.XGLTYPE, {"path": "z.jpg"})
        + member_bytes(sample_members("a") + sample_members("b"))
        + END
    )
    assert tarfile_names(shard) == ["z.jpg"] * 4
    augment_fails(tmp_path, shard, "global PAX header", "'path'")


def test_a_global_pax_comment_is_harmless(tmp_path: Path) -> None:
    shard = tmp_path / "in.tar"
    shard.write_bytes(
        pax_header(tarfile.XGLTYPE, {"comment": "made by hand"})
        + member_bytes(sample_members("a"))
        + END
    )
    assert tarfile_names(shard) == ["a.jpg", "a.json"]
    result = run_cli("augment", shard, tmp_path / "out.tar")
    assert result.returncode == 0, result.stderr


def test_a_pax_header_followed_by_the_end_is_refused(tmp_path: Path) -> None:
    """tarfile fails on it ("subsequent header"); ignoring it would accept the shard."""
    shard = tmp_path / "in.tar"
    shard.write_bytes(
        member_bytes(sample_members("a")) + pax_header(tarfile.XHDTYPE, {"path": "b.jpg"}) + END
    )
    assert tarfile_names(shard).startswith("error:")
    augment_fails(tmp_path, shard, "extended header", "not by a member")
