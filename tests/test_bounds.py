"""Sizes an untrusted shard or recipe can ask for are bounded before anything is allocated:
geometric outputs, recipe sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import image_bytes, run_cli, write_tar


def test_a_resize_whose_output_exceeds_max_mpx_fails_the_sample_not_the_machine(
    tmp_path: Path,
) -> None:
    """A 1000x1 PNG passes --max-mpx 0.5; flip-crop's shorter side 256 would make it
    256000x256 = 65.5 Mpx (at the default limit and 65535x1, about 13 GB)."""
    shard = write_tar(
        tmp_path / "in.tar",
        [
            ("sliver.png", image_bytes(1000, 1, "PNG")),
            ("sliver.json", b'{"cls": 1}'),
            ("photo.jpg", image_bytes(320, 240)),
            ("photo.json", b'{"cls": 2}'),
        ],
    )
    out = tmp_path / "out.tar"
    result = run_cli("augment", shard, out, "--recipe", "flip-crop", "--max-mpx", "0.5")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert [s["key"] for s in manifest["samples"]] == ["photo"]
    [failed] = manifest["failed"]
    assert failed["key"] == "sliver"
    assert "resize: the output would be 256000x256 = 65.5 Mpx" in failed["reason"]
    assert "--max-mpx" in failed["reason"]


@pytest.mark.parametrize(
    "op",
    [
        {"resize": {"width": 100000, "height": 100000}},
        {"resize": {"shorter": 10**9}},
        {"resize": {"longer": 70000}},
        {"center_crop": {"size": 10**12}},
        {"random_crop": {"width": 224, "height": 65536}},
    ],
)
def test_recipe_sizes_above_the_largest_image_side_are_usage_errors(
    tmp_path: Path, op: dict
) -> None:
    shard = write_tar(tmp_path / "in.tar", [("a.jpg", image_bytes())])
    recipe = {"ops": [{"image": {}}, op, {"encode": {"members": {"jpg": "image"}}}]}
    result = run_cli("augment", shard, tmp_path / "out.tar", "--recipe", json.dumps(recipe))
    assert result.returncode == 2, result.stderr
    assert "must be at most 65535" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
