"""Fixtures only; what tests share besides them is in helpers.py."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from helpers import Member, write_tar


def pytest_addoption(parser: pytest.Parser) -> None:
    fuzz = parser.getgroup("fuzz", "seeded fuzzing of shards (tests/test_fuzz.py)")
    fuzz.addoption("--fuzz-cases", type=int, default=200, help="cases per fuzz test")
    fuzz.addoption("--fuzz-seed", type=int, default=1, help="seed; a case is (seed, number)")


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
