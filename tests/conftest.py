"""Shared fixtures: real tar shards with real images, and the real CLI in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from shardflow.steps.synthetic import synthetic_image

Member = tuple[str, bytes]


def pytest_addoption(parser: pytest.Parser) -> None:
    fuzz = parser.getgroup("fuzz", "seeded fuzzing of shards (tests/test_fuzz.py)")
    fuzz.addoption("--fuzz-cases", type=int, default=200, help="cases per fuzz test")
    fuzz.addoption("--fuzz-seed", type=int, default=1, help="seed; a case is (seed, number)")


def image_bytes(
    width: int = 64, height: int = 48, fmt: str = "JPEG", seed: int = 0, mode: str = "RGB", **save
) -> bytes:
    """A real encoded image with photo-like content."""
    rng = np.random.default_rng(seed)
    image = synthetic_image(rng, width, height, seed % 3).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def write_tar(path: Path, members: Iterable[Member | tarfile.TarInfo]) -> Path:
    """A plain tar written by Python's tarfile, as most producers of shards do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, *, cls: int = 1, seed: int = 0, **image) -> list[Member]:
    """key.jpg + key.json with {"cls": cls}."""
    return [
        (f"{key}.jpg", image_bytes(seed=seed, **image)),
        (f"{key}.json", json.dumps({"cls": cls}).encode()),
    ]


def good_shard(path: Path, count: int = 6, **image) -> Path:
    members: list[Member] = []
    for index in range(count):
        members += sample_members(f"{index:016x}", cls=index % 3, seed=index, **image)
    return write_tar(path, members)


def run_cli(*args: str | os.PathLike, env: dict[str, str] | None = None, timeout: float = 120):
    """Run `shardflow ARGS` in a subprocess, as a user or an Argo pod would."""
    command = [sys.executable, "-m", "shardflow.workflows.cli", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def make_shard(tmp_path: Path) -> Callable[..., Path]:
    """make_shard(name, members) -> path of a tar under tmp_path."""

    def make(name: str, members: Iterable[Member | tarfile.TarInfo]) -> Path:
        return write_tar(tmp_path / name, members)

    return make


@pytest.fixture(scope="session")
def argo_validator() -> Callable[[dict], list[str]]:
    """validate(manifest) -> schema errors, against Argo's published JSON schema.

    The schema is read from $SHARDFLOW_ARGO_SCHEMA or ../shared/argo/schema.json; when it is
    missing the test fails in CI (CI=true) and is skipped elsewhere.
    """
    import jsonschema

    default = Path(__file__).resolve().parents[1].parent / "shared" / "argo" / "schema.json"
    path = Path(os.environ.get("SHARDFLOW_ARGO_SCHEMA") or default)
    if not path.is_file():
        message = f"Argo's JSON schema is missing at {path} (set SHARDFLOW_ARGO_SCHEMA)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    schema = json.loads(path.read_text())

    def validate(manifest: dict) -> list[str]:
        kind = manifest.get("kind", "Workflow")
        root = {
            "$schema": schema["$schema"],
            "definitions": schema["definitions"],
            "$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}",
        }
        validator = jsonschema.Draft202012Validator(root)
        return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(manifest)]

    return validate
