"""The seed recipe end to end: the webdataset docs recipe's output, from our step."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from helpers import good_shard, image_bytes, run_cli, write_tar


def docs_recipe_pixels(encoded: bytes) -> np.ndarray:
    """What the docs recipe computes: float32 [0, 1], minus min, over max, x255, truncated."""
    image = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")).astype(np.float32) / 255.0
    image -= image.min()
    image /= image.max()
    return np.array(np.clip(image, 0.0, 1.0) * 255.0, "uint8")


def read_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_seed_writes_png_and_cls_for_every_sample(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=5, width=80, height=60)
    result = run_cli("augment", source, tmp_path / "out.tar", "--recipe", "seed")
    assert result.returncode == 0, result.stderr
    inputs = read_members(source)
    outputs = read_members(tmp_path / "out.tar")
    keys = sorted(name.split(".")[0] for name in inputs if name.endswith(".jpg"))
    assert sorted(outputs) == sorted([f"{k}.png" for k in keys] + [f"{k}.cls" for k in keys])
    for key in keys:
        label = json.loads(inputs[f"{key}.json"])["cls"]
        assert outputs[f"{key}.cls"] == str(label).encode()
        written = np.asarray(Image.open(io.BytesIO(outputs[f"{key}.png"])))
        expected = docs_recipe_pixels(inputs[f"{key}.jpg"])
        assert written.shape == expected.shape
        assert np.array_equal(written, expected)
        assert written.min() == 0 and written.max() == 255


def test_members_are_written_in_input_order_png_then_cls(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=4)
    assert run_cli("augment", source, tmp_path / "out.tar").returncode == 0
    with tarfile.open(tmp_path / "out.tar") as tar:
        names = tar.getnames()
    with tarfile.open(source) as tar:
        keys = [n.split(".")[0] for n in tar.getnames() if n.endswith(".jpg")]
    assert names == [name for key in keys for name in (f"{key}.png", f"{key}.cls")]


def test_png_input_and_constant_image_do_not_become_nan(tmp_path: Path) -> None:
    flat = io.BytesIO()
    Image.new("RGB", (16, 8), (90, 90, 90)).save(flat, "PNG")
    source = write_tar(
        tmp_path / "in.tar",
        [
            ("flat.png", flat.getvalue()),
            ("flat.json", b'{"cls": 2}'),
            ("grey.png", image_bytes(20, 10, fmt="PNG", mode="L")),
            ("grey.json", b'{"cls": 0}'),
        ],
    )
    result = run_cli("augment", source, tmp_path / "out.tar")
    assert result.returncode == 0, result.stderr
    outputs = read_members(tmp_path / "out.tar")
    flat_out = np.asarray(Image.open(io.BytesIO(outputs["flat.png"])))
    assert flat_out.shape == (8, 16, 3) and not flat_out.any()
    grey_out = Image.open(io.BytesIO(outputs["grey.png"]))
    assert grey_out.mode == "RGB" and grey_out.size == (20, 10)


def test_output_is_readable_by_webdataset(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in.tar", count=3)
    assert run_cli("augment", source, tmp_path / "out.tar").returncode == 0
    dataset = wds.WebDataset(str(tmp_path / "out.tar"), shardshuffle=False).decode("pil")
    samples = list(dataset.to_tuple("png", "cls"))
    assert len(samples) == 3
    assert all(image.mode == "RGB" and isinstance(label, int) for image, label in samples)


def test_manifest_describes_the_shard(tmp_path: Path) -> None:
    source = good_shard(tmp_path / "in-000000.tar", count=4)
    output = tmp_path / "out-000000.tar"
    assert run_cli("augment", source, output).returncode == 0
    manifest = json.loads((tmp_path / "out-000000.manifest.json").read_text())
    assert manifest["input"] == str(source)
    assert manifest["counts"] == {"read": 4, "written": 4, "dropped": 0, "failed": 0}
    assert manifest["expect"] == ["png", "cls"]
    assert manifest["output_size"] == output.stat().st_size
    import hashlib

    assert manifest["output_sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    with tarfile.open(output) as tar:
        listed = [(m.name, m.size) for m in tar.getmembers()]
    recorded = [(m["name"], m["size"]) for s in manifest["samples"] for m in s["members"]]
    assert recorded == listed
    assert manifest["recipe"]["name"] == "seed"
    assert manifest["recipe_hash"].startswith("sha256:")
    assert set(manifest["versions"]) >= {"shardflow", "python", "pillow", "isal"}
    assert manifest["versions"]["isal"]  # the test extra installs it: the PNG fast path
    # Which library wrote the PNGs, and its version: bytes differ between encoders.
    recorded_png = manifest["png_encoders"]["png"]
    fastest = "fpng" if manifest["versions"]["fpng"] else "isal"
    assert recorded_png == {"encoder": fastest, "version": manifest["versions"][fastest]}
