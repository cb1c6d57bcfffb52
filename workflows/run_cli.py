"""`shardflow run INPUTS OUTPUTS`: the Argo DAG on this machine (the embedded default).

It runs the rendered manifest (argo/workflow.yaml, or --manifest), so a local run and a cluster
run execute the same pods with the same command lines and end with the same report and status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from shardflow.steps.cli_common import STORAGE_OPTIONS_VARIABLE, add_command, positive_int
from shardflow.steps.cpus import available_cpus
from shardflow.steps.errors import UsageError

from .dag_arguments import add_dag_arguments, given_parameters, patterns_named_for
from .depends import upstream
from .executor import Events, LocalExecutor, Node, RunResult

DESCRIPTION = """\
Run the Argo DAG on this machine: plan, then the augment tasks in a pool of worker processes,
then the verify batches, then the report step that merges them, exactly as the rendered
manifest describes (the same command lines, parameters and dependencies as on a cluster). One
progress bar follows every task's ARGO_PROGRESS_FILE; the run ends with verify's table and
summary.

exit status: verify's (0 every output shard verified, 1 a shard is missing or wrong), or 2
for a usage error found by the plan step."""

ERROR_LINES = 12


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "run",
        DESCRIPTION,
        "run the Argo DAG locally: plan, augment and verify in parallel, report",
    )
    add_dag_arguments(
        parser,
        patterns_note=" Left out for a template without patterns (argo/index-workflowtemplate"
        ".yaml: -p shards=...).",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        help="tasks running at once, each pinned to its share of the CPUs (default: the CPUs "
        "this process may use, at most the manifest's parallelism)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="a rendered Workflow or WorkflowTemplate to run, e.g. "
        "argo/reshard-workflowtemplate.yaml (default: argo/workflow.yaml as "
        "`shardflow render` makes it)",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="keep each task's command, output and progress file in DIR (by default they are "
        "kept only when the run fails)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print only failures and verify")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = _manifest(args.manifest)
    parameters = patterns_named_for(manifest, _parameters(args))
    parallelism = manifest["spec"].get("parallelism") or available_cpus()
    workers = args.workers or max(1, min(available_cpus(), parallelism))
    directory = args.logs or Path(tempfile.mkdtemp(prefix="shardflow-run-"))
    display = _Display(
        quiet=args.quiet, bar=not args.quiet and sys.stderr.isatty(), final=_last_tasks(manifest)
    )
    started = time.monotonic()
    try:
        executor = LocalExecutor(
            manifest, parameters, workers=workers, directory=directory, events=display
        )
        result = executor.run()
    finally:
        display.close()
    keep = args.logs is not None or result.phase != "Succeeded"
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    _report(result, workers, time.monotonic() - started, directory if keep else None)
    if display.final_output:
        print(display.final_output, flush=True)
    return result.exit_code


def _last_tasks(manifest: dict) -> frozenset[str]:
    """The tasks no other task waits for (the report step of augment and of reshard): a run
    ends with what they print, verify's table and summary."""
    templates = {t.get("name"): t for t in manifest.get("spec", {}).get("templates", [])}
    entry = templates.get(manifest.get("spec", {}).get("entrypoint"), {})
    tasks = entry.get("dag", {}).get("tasks", [])
    waited_for = set().union(*(upstream(task) for task in tasks))
    return frozenset({task["name"] for task in tasks} - waited_for)


def _manifest(path: Path | None) -> dict:
    if path is None:
        from .render import workflow_manifest  # imports Hera: only this command needs it

        return workflow_manifest()
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--manifest {path}: {exc}") from None
    if not isinstance(document, dict) or "spec" not in document:
        raise UsageError(f"--manifest {path}: not an Argo Workflow or WorkflowTemplate")
    return document


def _parameters(args: argparse.Namespace) -> dict[str, str]:
    given = given_parameters(args)
    if os.environ.get(STORAGE_OPTIONS_VARIABLE):  # the pods' variable must not undo the user's
        given.setdefault("storage-options", os.environ[STORAGE_OPTIONS_VARIABLE])
    return given


class _Display(Events):
    """One bar for the whole DAG (a task counts 1, filled by its progress file) and a line per
    finished task: what the Argo UI shows, in a terminal."""

    def __init__(self, *, quiet: bool, bar: bool, final: frozenset[str] = frozenset()) -> None:
        self.quiet = quiet
        self.final = final  # the DAG's last tasks: their output ends the run's
        self.final_output = ""  # verify's table and summary: what a run ends with
        self.bar = (
            tqdm(
                total=1,
                desc="run",
                unit="task",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} tasks "
                "[{elapsed}<{remaining}]{postfix}",
                file=sys.stderr,
                mininterval=0.2,
            )
            if bar
            else None
        )

    def task_omitted(self, task: str) -> None:
        self._write(f"{task}: omitted (its depends expression is false)")

    def node_finished(self, node: Node) -> None:
        stdout = _read(node.stdout)
        if node.phase != "Succeeded":
            reason = node.error or f"exit status {node.exit_code}"
            self._write(f"{node.name}: {node.phase} ({reason}) after {node.seconds:.1f} s")
            for line in _read(node.stderr).splitlines()[-ERROR_LINES:]:
                self._write(f"  {line}")
        elif not self.quiet and node.task not in self.final:
            last = stdout.strip().splitlines()[-1:] or [""]
            self._write(f"{node.name}: {node.phase} in {node.seconds:.1f} s: {last[0]}")
        if node.task in self.final:
            self.final_output = stdout.rstrip("\n")

    def progress(self, done: float, total: int, running: list[Node]) -> None:
        if self.bar is None or total == 0:
            return
        self.bar.total = total
        self.bar.n = round(done, 1)
        names = ", ".join(n.name for n in running[:3]) + (", ..." if len(running) > 3 else "")
        self.bar.set_postfix_str(f"running {names}" if names else "", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)


def _report(result: RunResult, workers: int, seconds: float, logs: Path | None) -> None:
    counts: dict[str, int] = {}
    for node in result.nodes:
        counts[node.task] = counts.get(node.task, 0) + 1
    pods = ", ".join(f"{count} {task}" for task, count in counts.items())
    where = f"; task logs in {logs}" if logs else ""
    print(
        f"workflow {result.phase} in {seconds:.1f} s ({pods} with {workers} worker(s)){where}",
        flush=True,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
