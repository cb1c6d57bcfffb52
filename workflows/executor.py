"""Run a rendered Argo DAG on this machine, the way the controller would run it on a cluster.

The executor reads the manifest, not our Python: the same parameters, `{{...}}` substitution,
withSequence fan-out, depends expressions, output parameters read from files and container
command lines, run as subprocesses instead of pods. So `shardflow run` tests the manifests in
argo/ end to end, and a user's laptop run behaves like their cluster run.

What stands in for Kubernetes: a pool of at most `workers` processes (spec.parallelism); each
node's emptyDir volumes become directories of its own, and arguments and output paths under
their mount points are mapped there; each node gets its own ARGO_PROGRESS_FILE, polled as
Argo's executor polls it; each worker is pinned to its share of the CPUs, as a pod's CPU limit
would confine it, so the step's thread count (which follows affinity and cgroup quota) does
not multiply by the number of workers. Not emulated: retries (a failure fails its node at
once, whatever its exit code), deadlines, resources (so no OOM kill), enum checks the cluster
skips (run checks every parameter up front; plan checks again), template display names,
security contexts, secrets (a local run uses the caller's environment and credentials).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardflow.steps.errors import EXIT_FAILED, UsageError
from shardflow.steps.progress import ARGO_PROGRESS_FILE, INTERVAL_VARIABLE

from . import argo_vars
from .dag_arguments import resolve_parameters
from .depends import TaskOutcome, ancestors, evaluate, upstream

POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 30  # as Kubernetes' default terminationGracePeriodSeconds
# Seconds between a step's progress-file writes. On a cluster Argo's wait container reads the
# file every 3 s but reports it only every ARGO_PROGRESS_PATCH_TICK_DURATION (1 minute by
# default), so the UI's bar moves about once a minute; locally the bar is redrawn as it moves.
PROGRESS_INTERVAL = "1"
# The image's entrypoint is this very program: run it with this interpreter. Not with `-m`,
# which puts the working directory first on the import path: a `yaml.py` or a `shardflow/`
# there (the user's data directory, a checkout) would run in every task. The path entry is
# removed before anything is imported, as `python -P` (3.11+) would.
_ENTRY = (
    "import sys\n"
    "if not getattr(sys.flags, 'safe_path', False): del sys.path[0]\n"
    "from shardflow.workflows.cli import main\n"
    "sys.exit(main())"
)
SHARDFLOW = [sys.executable, "-c", _ENTRY]


@dataclass
class Node:
    """One pod: a template invoked with its inputs resolved."""

    name: str
    task: str
    template: dict[str, Any]
    inputs: dict[str, str]
    directory: Path
    process: subprocess.Popen | _Exited | None = None
    exit_code: int | None = None
    phase: str | None = None
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    mounts: dict[str, Path] = field(default_factory=dict)  # emptyDir mount path -> local dir
    cpu_slot: int | None = None  # the share of the CPUs it runs on, while it runs
    _started: float = 0.0

    @property
    def progress_file(self) -> Path:
        return self.directory / "progress"

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout"

    @property
    def stderr(self) -> Path:
        return self.directory / "stderr"

    def launch(self, command: list[str], env: dict[str, str], cpus: list[int]) -> None:
        """Start the pod's process on `cpus`, its output in the node's directory."""
        (self.directory / "command.json").write_text(json.dumps(command))
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self._started = time.monotonic()
            try:
                with _pinned(cpus):
                    self.process = subprocess.Popen(
                        command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
                    )
            except OSError as exc:
                self.error = f"cannot start {command[0]}: {exc}"
                self.process = _Exited(127)

    def exited(self) -> None:
        """Record the exit of its process: code, duration and phase (as Argo names them)."""
        assert self.process is not None
        self.exit_code = self.process.wait()
        self.seconds = time.monotonic() - self._started
        self.phase = "Succeeded" if self.exit_code == 0 else "Failed"
        if self.error:
            self.phase = "Errored"

    def progress(self) -> float:
        """Fraction done, from the node's ARGO_PROGRESS_FILE (`N/M`), as Argo reads it."""
        if self.phase is not None:
            return 1.0
        try:
            done, total = self.progress_file.read_text().split("/")
            return min(1.0, max(0.0, int(done) / int(total))) if int(total) > 0 else 0.0
        except (OSError, ValueError):
            return 0.0


@dataclass
class RunResult:
    phase: str
    exit_code: int
    outcomes: dict[str, TaskOutcome]
    nodes: list[Node]
    global_outputs: dict[str, str]


class Events:
    """What a display hears about; the default hears nothing."""

    def task_planned(self, task: str, nodes: list[Node]) -> None: ...

    def task_omitted(self, task: str) -> None: ...

    def node_finished(self, node: Node) -> None: ...

    def progress(self, done: float, total: int, running: list[Node]) -> None: ...


@dataclass
class _RunState:
    """Where a run stands: tasks not yet scheduled, nodes queued and running, and what the
    finished ones produced."""

    pending: list[dict[str, Any]]
    queue: deque[Node] = field(default_factory=deque)
    running: list[Node] = field(default_factory=list)
    outcomes: dict[str, TaskOutcome] = field(default_factory=dict)
    task_outputs: dict[str, str] = field(default_factory=dict)
    task_nodes: dict[str, list[Node]] = field(default_factory=dict)
    global_outputs: dict[str, str] = field(default_factory=dict)

    def nodes(self) -> list[Node]:
        return [n for nodes in self.task_nodes.values() for n in nodes]


class LocalExecutor:
    def __init__(
        self,
        manifest: dict[str, Any],
        parameters: dict[str, str],
        *,
        workers: int,
        directory: Path,
        events: Events | None = None,
    ) -> None:
        self.spec = manifest["spec"]
        self.templates = {t["name"]: t for t in self.spec.get("templates", [])}
        self.parameters = resolve_parameters(manifest, parameters)
        self.workers = max(1, workers)
        self.directory = directory
        self.events = events or Events()
        self.cpus = _CpuSlots(self.workers)
        entry = self.templates.get(self.spec.get("entrypoint"))
        if entry is None or "dag" not in entry:
            raise UsageError("the local executor runs a manifest whose entrypoint is a DAG")
        self.tasks = entry["dag"]["tasks"]

    def run(self) -> RunResult:
        """Poll as the controller does: schedule the tasks whose dependencies are done, start
        nodes while workers are free, collect the finished ones, settle the tasks."""
        state = _RunState(pending=list(self.tasks))
        try:
            while state.pending or state.queue or state.running:
                self._schedule_ready(state)
                self._start_queued(state)
                self._collect_finished(state)
                self._settle_tasks(state)
                self._refuse_stall(state)
                nodes = state.nodes()
                self.events.progress(
                    sum(n.progress() for n in nodes), len(nodes), list(state.running)
                )
                if state.queue or state.running:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: stop the tasks as pods are stopped
            killed = _stop(state.nodes())
            if killed:
                exc.left_behind = (  # type: ignore[attr-defined]
                    f"{', '.join(killed)} did not stop within {STOP_GRACE_SECONDS} s and were "
                    "killed: they may leave .partial files or unfinished uploads"
                )
            raise
        finally:
            _stop(state.running)
        phase, exit_code = self._result(state.outcomes, state.task_nodes)
        return RunResult(phase, exit_code, state.outcomes, state.nodes(), state.global_outputs)

    def _schedule_ready(self, state: _RunState) -> None:
        """Tasks whose upstream tasks all finished: omitted (depends false) or expanded into
        nodes and queued."""
        for task in [t for t in state.pending if upstream(t) <= set(state.outcomes)]:
            state.pending.remove(task)
            name = task["name"]
            if "depends" in task and not evaluate(task["depends"], state.outcomes):
                state.outcomes[name] = TaskOutcome("Omitted")
                self.events.task_omitted(name)
                continue
            nodes = self._expand(task, state.task_outputs)
            state.task_nodes[name] = nodes
            state.queue.extend(nodes)
            self.events.task_planned(name, nodes)

    def _start_queued(self, state: _RunState) -> None:
        while state.queue and len(state.running) < self.workers:
            node = state.queue.popleft()
            self._start(node)
            state.running.append(node)

    def _collect_finished(self, state: _RunState) -> None:
        for node in [n for n in state.running if n.process and n.process.poll() is not None]:
            state.running.remove(node)
            self._finish(node, state.global_outputs)
            self.events.node_finished(node)

    def _settle_tasks(self, state: _RunState) -> None:
        """A task whose nodes all finished gets its outcome; a task without a loop publishes
        its output parameters for the tasks after it."""
        for name, nodes in state.task_nodes.items():
            if name not in state.outcomes and all(n.phase for n in nodes):
                state.outcomes[name] = _group_outcome(self._task(name), nodes)
                if len(nodes) == 1 and not _loops(self._task(name)):
                    for key, value in nodes[0].outputs.items():
                        state.task_outputs[f"tasks.{name}.outputs.parameters.{key}"] = value

    def _refuse_stall(self, state: _RunState) -> None:
        """Nothing runs or waits, yet tasks remain that can never start."""
        ready = any(upstream(t) <= set(state.outcomes) for t in state.pending)
        if state.pending and not (state.queue or state.running) and not ready:
            names = ", ".join(t["name"] for t in state.pending)
            raise UsageError(f"tasks {names} wait for tasks that never run")

    def _task(self, name: str) -> dict[str, Any]:
        return next(t for t in self.tasks if t["name"] == name)

    def _expand(self, task: dict[str, Any], task_outputs: dict[str, str]) -> list[Node]:
        """The task's nodes: one, or one per withSequence/withItems item."""
        name = task["name"]
        template = self.templates.get(task["template"])
        if template is None or "container" not in template:
            raise UsageError(f"task {name}: the local executor runs container templates only")
        scope = {**self._workflow_scope(), **task_outputs}
        items = _items(task, scope)
        nodes = []
        for index, item in enumerate(items if items is not None else [None]):
            node_name = name if item is None else f"{name}({index})"
            item_scope = scope if item is None else {**scope, "item": item}
            arguments = {
                p["name"]: argo_vars.substitute(str(p.get("value", "")), item_scope, node_name)
                for p in task.get("arguments", {}).get("parameters", [])
            }
            inputs = {}
            for declared in template.get("inputs", {}).get("parameters", []):
                value = arguments.get(declared["name"], declared.get("value"))
                if value is None:
                    raise UsageError(f"{node_name}: input {declared['name']!r} is not given")
                inputs[declared["name"]] = str(value)
            directory = self.directory / node_name
            directory.mkdir(parents=True, exist_ok=True)
            mounts = self._empty_dirs(directory, template)
            nodes.append(Node(node_name, name, template, inputs, directory, mounts=mounts))
        return nodes

    def _workflow_scope(self) -> dict[str, str]:
        return {f"workflow.parameters.{k}": v for k, v in self.parameters.items()}

    def _start(self, node: Node) -> None:
        scope = {
            **self._workflow_scope(),
            **{f"inputs.parameters.{k}": v for k, v in node.inputs.items()},
        }
        raw = node.template["container"]
        # Map the manifest's own paths before substituting: parameter values (the user's
        # input and output paths) are host paths here and must stay as given.
        mapped = [
            _map_path(arg, node.mounts) for arg in raw.get("command", []) + raw.get("args", [])
        ]
        command = argo_vars.substitute_all(mapped, scope, node.name)
        container = argo_vars.substitute_all({"env": raw.get("env", [])}, scope, node.name)
        if command[:1] == ["shardflow"]:
            command = SHARDFLOW + command[1:]
        env = dict(os.environ)
        env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
        env[ARGO_PROGRESS_FILE] = str(node.progress_file)
        env[INTERVAL_VARIABLE] = PROGRESS_INTERVAL
        if "/tmp" in node.mounts:
            env["TMPDIR"] = str(node.mounts["/tmp"])
        node.cpu_slot, cpus = self.cpus.acquire()
        node.launch(command, env, cpus)

    def _empty_dirs(self, directory: Path, template: dict[str, Any]) -> dict[str, Path]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        volumes.update({v["name"]: v for v in template.get("volumes", [])})
        mounts = {}
        for mount in template.get("container", {}).get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "emptyDir" in volume:
                local = directory / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                mounts[mount["mountPath"].rstrip("/") or "/"] = local
        return mounts

    def _finish(self, node: Node, global_outputs: dict[str, str]) -> None:
        node.exited()
        self.cpus.release(node.cpu_slot)
        node.cpu_slot = None
        for parameter in node.template.get("outputs", {}).get("parameters", []):
            source = parameter.get("valueFrom", {})
            try:
                value = Path(_map_path(source["path"], node.mounts)).read_text()
                value = value[:-1] if value.endswith("\n") else value
            except (KeyError, OSError):
                if "default" not in source:
                    if node.phase == "Succeeded":
                        node.phase = "Errored"
                        node.error = f"output parameter {parameter['name']!r} was not written"
                    continue
                value = str(source["default"])
            node.outputs[parameter["name"]] = value
            if "globalName" in parameter:
                global_outputs[parameter["globalName"]] = value

    def _result(
        self, outcomes: dict[str, TaskOutcome], task_nodes: dict[str, list[Node]]
    ) -> tuple[str, int]:
        """The DAG's phase from its leaf tasks, as Argo assesses it; the exit status to match."""
        upstream_of = {t["name"]: upstream(t) for t in self.tasks}
        depended = set().union(*upstream_of.values())
        failed = ("Failed", "Errored")
        ran_in_order = [n for t in self.tasks for n in task_nodes.get(t["name"], [])]
        for leaf in [t["name"] for t in self.tasks if t["name"] not in depended]:
            outcome = outcomes.get(leaf, TaskOutcome("Omitted"))
            if outcome.phase in failed:
                nodes = [n for n in task_nodes[leaf] if n.phase in failed]
            elif outcome.phase == "Omitted" and any(
                outcomes[a].phase in failed for a in ancestors(leaf, upstream_of) if a in outcomes
            ):
                nodes = [n for n in ran_in_order if n.phase in failed]
            else:
                continue
            codes = [n.exit_code for n in nodes if n.exit_code]
            return "Failed", codes[0] if codes else EXIT_FAILED
        return "Succeeded", 0


class _Exited:
    """Stands in for a process that could not be started."""

    def __init__(self, code: int) -> None:
        self.returncode = code

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


def _stop(nodes: list[Node]) -> list[str]:
    """SIGTERM each running node's process, as the kubelet stops a pod, and wait for it to
    clean up; after the grace period, SIGKILL. Returns the names of the nodes killed."""
    alive = [n for n in nodes if n.process is not None and n.process.poll() is None]
    for node in alive:
        node.process.terminate()  # type: ignore[union-attr]
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    killed = []
    for node in alive:
        assert node.process is not None
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
            killed.append(node.name)
    return killed


def _loops(task: dict[str, Any]) -> bool:
    return any(key in task for key in ("withSequence", "withItems", "withParam"))


def _items(task: dict[str, Any], scope: dict[str, str]) -> list[str] | None:
    """The loop's items as strings, or None when the task does not loop."""
    where = f"task {task['name']}"
    if "withItems" in task:
        return [item if isinstance(item, str) else json.dumps(item) for item in task["withItems"]]
    if "withParam" in task:
        value = json.loads(argo_vars.substitute(task["withParam"], scope, where))
        return [item if isinstance(item, str) else json.dumps(item) for item in value]
    if "withSequence" not in task:
        return None
    sequence = argo_vars.substitute_all(task["withSequence"], scope, where)
    try:
        start = int(sequence.get("start", 0))
        stop = start + int(sequence["count"]) if "count" in sequence else int(sequence["end"]) + 1
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{where}: bad withSequence {sequence}: {exc}") from None
    fmt = sequence.get("format")
    return [fmt % number if fmt else str(number) for number in range(start, stop)]


def _group_outcome(task: dict[str, Any], nodes: list[Node]) -> TaskOutcome:
    phases = [n.phase or "Errored" for n in nodes]
    phase = next((p for p in ("Failed", "Errored") if p in phases), "Succeeded")
    return TaskOutcome(phase, phases if _loops(task) else [])


def _map_path(argument: str, mounts: dict[str, Path]) -> str:
    """An argument naming a path under an emptyDir mount (also as --opt=PATH), mapped locally."""
    option, equals, value = argument.partition("=")
    prefix, text = (option + equals, value) if equals and option.startswith("-") else ("", argument)
    for mount_path, local in mounts.items():
        if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
            return prefix + str(local) + text[len(mount_path.rstrip("/")) :]
    return argument


class _CpuSlots:
    """Splits this process's CPUs between the workers, one share per running node."""

    def __init__(self, workers: int) -> None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows: no pinning
            cpus = []
        if cpus and workers <= len(cpus):
            self.shares = [
                cpus[i * len(cpus) // workers : (i + 1) * len(cpus) // workers]
                for i in range(workers)
            ]
        else:
            self.shares = [[cpus[i % len(cpus)]] if cpus else [] for i in range(workers)]
        self.free = list(range(workers))

    def acquire(self) -> tuple[int, list[int]]:
        slot = self.free.pop(0)
        return slot, self.shares[slot]

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self.free.append(slot)


@contextlib.contextmanager
def _pinned(cpus: list[int]) -> Iterator[None]:
    """Pin the calling thread while it forks: the child inherits the mask, nothing races."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)
