"""The image, as far as it can be checked without a Docker engine.

The wheel is built and installed into a fresh virtual environment the way containers/Dockerfile
installs it (the wheel with extras, `--constraint containers/constraints.txt`, offline: the
dependencies already installed here stand in for the index), then a task's command line taken
from the rendered manifest runs with that installation's `shardflow`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from shardflow.workflows import argo_vars, dag
from shardflow.workflows.dag_arguments import resolve_parameters

from helpers import good_shard

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "containers" / "Dockerfile"
CONSTRAINTS = ROOT / "containers" / "constraints.txt"
# The image's extras that the test environment also installs.
TEST_EXTRAS = "s3,fast-png,strict-jpeg,fpng,parquet,fast-resize"


def _offline_pip_env() -> dict[str, str]:
    """No index, no configuration: only the wheel and what is installed here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the built wheel, its dependencies visible but not copied."""
    root = tmp_path_factory.mktemp("image")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "wheels", ROOT],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "wheels").glob("shardflow-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies installed here, as a path entry (a .pth line adds the directory only:
    # the editable install of this source tree there is not activated).
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", python, "install", "--no-index",
            "--constraint", CONSTRAINTS, f"{wheel}[{TEST_EXTRAS}]",
        ],
        capture_output=True,
        text=True,
        env=_offline_pip_env(),
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin"


def test_a_rendered_task_runs_with_the_installed_wheel(installed, tmp_path):
    manifest = yaml.safe_load((ROOT / "argo" / "workflow.yaml").read_text())
    template = next(t for t in manifest["spec"]["templates"] if t["name"] == "augment")
    good_shard(tmp_path / "in-000000.tar", count=3)
    good_shard(tmp_path / "in-000001.tar", count=3)
    parameters = resolve_parameters(
        manifest,
        {
            "input": str(tmp_path / "in-{000000..000001}.tar"),
            "output": str(tmp_path / "out" / "out-{000000..000001}.tar"),
        },
    )
    scope = {f"workflow.parameters.{name}": value for name, value in parameters.items()}
    scope.update({"inputs.parameters.task-index": "1", "inputs.parameters.shards-per-task": "1"})
    container = template["container"]
    command = argo_vars.substitute_all(container["command"] + container["args"], scope, "augment")
    assert command[0] == "shardflow"  # the image's entrypoint, found on PATH
    env = {
        **os.environ,
        "PATH": f"{installed}{os.pathsep}{os.environ['PATH']}",
        "ARGO_PROGRESS_FILE": str(tmp_path / "progress"),
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "out-000001.tar").is_file()
    assert not (tmp_path / "out" / "out-000000.tar").exists()  # task 1 is shard 1 only
    manifest_file = json.loads((tmp_path / "out" / "out-000001.manifest.json").read_text())
    assert manifest_file["counts"]["written"] == 3
    assert (tmp_path / "progress").read_text() == "100/100"
    where = subprocess.run(
        [installed / "python", "-c", "import shardflow.steps as s; print(s.__file__)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert where.stdout.startswith(str(installed.parent)), where.stdout  # the wheel, not src


def test_constraints_pin_every_runtime_dependency_at_the_tested_version():
    """What the image installs is what the tests ran with (make test installs with them too)."""
    sys.path.insert(0, str(ROOT / "containers"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    installed = lock.closure(f"shardflow[{TEST_EXTRAS}]")
    stale = {name: (pins.get(name), version) for name, version in installed.items()
             if pins.get(name) != version}  # fmt: skip
    assert not stale, f"regenerate containers/constraints.txt (make constraints): {stale}"
    for extra_package in (
        "s3fs",
        "gcsfs",
        "isal",
        "simplejpeg",
        "fpng",
        "pyarrow",
        "opencv-python-headless",
    ):
        assert extra_package in pins  # the image's extras
    extras = re.search(r"shardflow-\*\.whl\)(\[[a-z0-9,-]+\])", DOCKERFILE.read_text())
    assert extras is not None and f"shardflow{extras[1]}" == lock.ROOT  # pins what it installs
    assert set(TEST_EXTRAS.split(",")) <= set(extras[1].strip("[]").split(","))


def test_dockerfile_matches_what_the_manifests_expect():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:[\d.]+-slim", text, re.M)
    assert f"USER {dag.USER_ID}:{dag.USER_ID}" in text  # runAsUser in every pod
    assert f"--uid {dag.USER_ID}" in text
    assert 'ENTRYPOINT ["shardflow"]' in text  # the command every template runs
    assert "--constraint /constraints.txt" in text and "containers/constraints.txt" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!containers/constraints.txt" in ignored
