"""`shardflow run` starts its tasks so that Python files in the working directory never run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import good_shard

ARGO = Path(__file__).resolve().parents[1] / "argo"
PLANT = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def test_tasks_do_not_import_from_the_working_directory(tmp_path: Path) -> None:
    """A data directory holding a `yaml.py` and a `shardflow/` package: `python -m` in the
    tasks would run both (the working directory comes first on its import path)."""
    work = tmp_path / "work"
    marker = tmp_path / "planted-code-ran"
    (work / "shardflow" / "workflows").mkdir(parents=True)
    for module in ("yaml.py", "shardflow/__init__.py", "shardflow/workflows/__init__.py"):
        (work / module).write_text(PLANT.format(marker=str(marker)))
    (work / "shardflow" / "workflows" / "cli.py").write_text(PLANT.format(marker=str(marker)))
    good_shard(work / "in" / "in-000000.tar", count=2)
    # The console script, as a user types `shardflow run` (its own directory starts its path).
    script = Path(sys.executable).with_name("shardflow")
    assert script.is_file(), "the test needs the installed console script"
    result = subprocess.run(
        [script, "run", "in/in-000000.tar", "out/out-000000.tar", "--workers", "1",
         "--manifest", ARGO / "workflow.yaml"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert not marker.exists(), "a task imported code from the working directory"
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "out" / "out-000000.manifest.json").is_file()
