"""One grouping rule (samples.group_members) behind both readers of samples: augment's
SampleReader refuses a shard at what breaks the rule, verify collects every break. The same
real tar files go through both; they must agree on what is a sample and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardflow.steps.errors import DataError
from shardflow.steps.samples import SampleReader
from shardflow.steps.tar_reader import TarReader
from shardflow.steps.verify import group_samples

from helpers import write_tar

JPG = b"\xff\xd8 not decoded here"

CASES = {
    "good": ([("a.jpg", JPG), ("a.json", b"{}"), ("b.jpg", JPG)], None),
    "repeated key": ([("a.jpg", JPG), ("b.jpg", JPG), ("a.json", b"{}")], "duplicate key"),
    "duplicate member": ([("a.jpg", JPG), ("a.jpg", JPG)], "duplicate member"),
    "unsafe name": ([("a.jpg", JPG), ("../b.jpg", JPG)], "'../b.jpg'"),
}


def read_both(path: Path) -> tuple[list[tuple[str, list[str]]] | str, list, list[str]]:
    """(augment's samples or its error, verify's samples and problems, ignored members)."""
    with path.open("rb") as stream:
        reader = SampleReader(
            TarReader(stream), str(path), wants=lambda extension: True, max_member_bytes=1 << 20
        )
        try:
            read: list[tuple[str, list[str]]] | str = [
                (sample.key, list(sample.sizes)) for sample in reader
            ]
        except DataError as exc:
            read = str(exc)
    with path.open("rb") as stream:
        samples, problems = group_samples(list(TarReader(stream)))
    grouped = [(sample.key, sample.extensions) for sample in samples]
    return read, [grouped, [str(p) for p in problems]], reader.ignored_members


@pytest.mark.parametrize("case", CASES)
def test_augment_and_verify_group_and_refuse_alike(tmp_path: Path, case: str) -> None:
    members, refusal = CASES[case]
    read, (grouped, problems), _ = read_both(write_tar(tmp_path / "in.tar", members))
    if refusal is None:
        assert problems == []
        assert read == grouped == [("a", ["jpg", "json"]), ("b", ["jpg"])]
    else:
        assert isinstance(read, str) and refusal in read, read
        assert len(problems) == 1 and refusal in problems[0], problems


def test_a_member_without_extension_is_skipped_by_augment_and_reported_by_verify(
    tmp_path: Path,
) -> None:
    path = write_tar(tmp_path / "in.tar", [("a.jpg", JPG), ("README", b"x"), ("a.json", b"{}")])
    read, (grouped, problems), ignored = read_both(path)
    assert read == grouped == [("a", ["jpg", "json"])]  # the member between breaks no sample
    assert ignored == ["README"]
    assert len(problems) == 1 and "'README' has no extension" in problems[0]
