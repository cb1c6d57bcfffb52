"""What the tests share besides fixtures: real tar shards with real images, and the one way
to run the real CLI in a subprocess (conftest.py holds the fixtures only)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from shardflow.steps.synthetic import synthetic_image

Member = tuple[str, bytes]
CLI = [sys.executable, "-m", "shardflow.workflows.cli"]


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


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the machine's AWS_* and SHARDFLOW_* set-up, plus
    `extra`: a test states exactly how the worker reaches storage."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDFLOW_STORAGE"))}
    return {**base, **(extra or {})}


def run_cli(
    *args: str | os.PathLike,
    env: dict[str, str] | None = None,
    clean_env: bool = False,
    background: bool = False,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
    cwd: Path | None = None,
) -> Any:
    """Run `shardflow ARGS` in a subprocess, as a user or an Argo pod would: the finished
    process (stdout and stderr as text), or with `background` the running one (to be
    signalled or killed). `env` is added to this process's environment, or with `clean_env`
    to it without the machine's storage set-up (`environment`)."""
    command = [*CLI, *map(str, args)]
    full_env = environment(env) if clean_env else {**os.environ, **(env or {})}
    how: dict[str, Any] = {"text": True, "env": full_env, "cwd": cwd, "preexec_fn": preexec_fn}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **how)
    return subprocess.run(command, capture_output=True, timeout=timeout, **how)


def comparable_report(path: Path) -> dict:
    """A verify report without what differs between any two runs: the seconds taken."""
    document = json.loads(path.read_text())
    document["summary"].pop("seconds")
    line = document["summary"].pop("line")
    return {**document, "line": re.sub(r"checked in [\d.]+ s", "checked in S s", line)}


def killing_recipe(folder: Path, key: str) -> Path:
    """A recipe whose plugin (killer.py in `folder`) kills its process at sample `key`."""
    (folder / "killer.py").write_text(
        "import os, signal\n"
        "def kill_at(sample):\n"
        f"    if sample['__key__'] == {key!r}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return sample\n"
    )
    steps = [
        {"map": {"function": "killer:kill_at"}},
        {"image": {"from": "jpg"}},
        {"encode": {"members": {"png": "image"}}},
    ]
    recipe = folder / "recipe.json"
    recipe.write_text(json.dumps(steps))
    return recipe
