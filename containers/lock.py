"""Pin the image's Python dependencies to the versions installed here.

The image installs shardflow with the extras of ROOT and `--constraint
containers/constraints.txt`, and `make test` installs the development environment with the
same file, so the image runs the versions the tests ran with. Regenerate after changing
dependencies (`make constraints`):

    .venv/bin/python containers/lock.py > containers/constraints.txt
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "shardflow[s3,gcs,fast-png,strict-jpeg,fpng,parquet,fast-resize]"


def closure(root: str = ROOT) -> dict[str, str]:
    """Installed name -> version of every distribution `root` needs, transitively."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    stack = [Requirement(root)]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        distribution = metadata.distribution(name)  # PackageNotFoundError: install it first
        if name != "shardflow":
            pinned[name] = distribution.version
        for line in distribution.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in requirement.extras or {""}
            ):
                stack.append(needed)
    return pinned


def main() -> None:
    print(f"# {ROOT} and every dependency, pinned to the versions the tests ran with.")
    print(f"# Python {sys.version_info.major}.{sys.version_info.minor} (the image's base).")
    print("# Regenerate with `make constraints` after changing pyproject.toml.")
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
