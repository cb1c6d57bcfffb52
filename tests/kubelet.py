"""The test kubelet: runs the pods Argo's real workflow-controller creates, as local processes.

It is ours, not Kubernetes' kubelet, and it stands in for two things a cluster has: the kubelet
(with the scheduler: it registers one Node and binds every pending pod to it) and Argo's
executor in the pod (`argoexec init`/`wait`, and `emissary` around the main command). What it
does, for each pod:

- runs the main container's own command (what follows `emissary --` in the command the
  controller rewrote, then the container's args, byte for byte) with the container's env as
  the pod spec gives it (fieldRef, secretRef and configMapRef resolved as a kubelet does, plus
  the image's PATH and HOME), in the project's virtual environment instead of the image;
- gives every emptyDir volume a folder of its own, bind-mounted at the container's mount
  paths in a private mount namespace (`unshare --mount`), so paths in args and env need no
  rewriting and pods never see each other's /tmp;
- reports to the controller the way argoexec's wait container does: a WorkflowTaskResult named
  after the node, labelled `report-outputs-completed=false`, then the template's output
  parameters read from their `valueFrom.path` (one trailing newline trimmed, `default` when the
  file is missing), the `N/M` progress read from ARGO_PROGRESS_FILE, and the label set to
  `true`; then the pod status with the real exit codes of the wait and main containers.

Images, resources, security contexts and deadlines are not enforced.
"""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kube_api import ARGO, ApiError, KubeAPI

NODE = "shardflow-test-node"
LABEL_WORKFLOW = "workflows.argoproj.io/workflow"
LABEL_COMPLETED = "workflows.argoproj.io/report-outputs-completed"
POLL_SECONDS = 0.3
# The image's environment (containers/Dockerfile): the venv stands in for the image's Python.
STAGING = "/mnt"  # where a pod's folder is seen while its mounts are made (private namespace)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_ENV = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main_argv(container: dict) -> list[str]:
    """The main container's own command: what follows `argoexec emissary ... --`, then args."""
    command = container.get("command") or []
    if "--" not in command or "emissary" not in command:
        raise ValueError(f"container {container['name']} is not wrapped by Argo's emissary")
    return command[command.index("--") + 1 :] + list(container.get("args") or [])


def hidden_by(targets: list[str]) -> list[Path]:
    """The folders this machine's pods run from (the checkout, its virtual environment and
    the Python under it) that a volume mounted at one of `targets` would hide."""
    needed = {Path(__file__).resolve().parents[1], Path(sys.prefix), Path(sys.base_prefix)}
    needed |= {path.resolve() for path in needed}
    roots = [Path(target) for target in targets]
    return sorted(
        path for path in needed if any(path == root or root in path.parents for root in roots)
    )


@dataclass
class PodRun:
    """What the kubelet knows of one pod it runs."""

    name: str
    workdir: Path
    process: subprocess.Popen | None = None
    exit_code: int | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.workdir / "main.log"


class TestKubelet:
    """Binds and runs every pod of `namespace` until stopped."""

    __test__ = False  # not a pytest test class

    def __init__(self, api: KubeAPI, namespace: str, workdir: Path) -> None:
        self.api = api
        self.namespace = namespace
        self.workdir = workdir
        self.runs: dict[str, PodRun] = {}
        self.errors: list[str] = []
        self._running: set[str] = set()
        self.max_running: dict[str, int] = {}  # template name -> most pods running at once
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-kubelet", daemon=True)
        self.venv_bin = Path(sys.executable).parent

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> TestKubelet:
        self._register_node()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for run in list(self.runs.values()):
            if run.process and run.process.poll() is None:
                run.process.kill()

    def _register_node(self) -> None:
        node = self.api.create(
            "/api/v1/nodes",
            {"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}},
        )
        status = {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": now(),
                    "lastTransitionTime": now(),
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        }
        self.api.merge_patch(f"/api/v1/nodes/{node['metadata']['name']}/status", {"status": status})

    # --- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        pods = f"/api/v1/namespaces/{self.namespace}/pods"
        while not self._stop.is_set():
            try:
                for pod in self.api.items(pods):
                    self._handle(pod)
            except Exception as error:  # keep serving pods; the failure is reported to tests
                self.errors.append(f"kubelet loop: {error!r}")
            self._stop.wait(POLL_SECONDS)

    def _handle(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        name = meta["name"]
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}"
        if meta.get("deletionTimestamp"):
            run = self.runs.get(name)
            if run and run.process and run.process.poll() is None:
                run.process.kill()
            try:
                self.api.delete(path, grace_seconds=0)
            except ApiError as error:
                if error.status != 404:  # gone already: what the delete was for
                    raise
            return
        if not spec.get("nodeName"):
            try:
                self.api.create(
                    f"{path}/binding",
                    {
                        "apiVersion": "v1",
                        "kind": "Binding",
                        "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
                    },
                )
            except ApiError as error:
                # Deleted since it was listed (the controller stopping its workflow): a
                # scheduler lets such a pod go; anything else is the kubelet's failure.
                if error.status not in (404, 409) or not self._gone(path):
                    raise
            return
        if name in self.runs or pod.get("status", {}).get("phase") not in (None, "Pending"):
            return
        run = PodRun(name, self.workdir / name)
        self.runs[name] = run
        threading.Thread(target=self._run_pod, args=(pod, run), daemon=True).start()

    def _gone(self, path: str) -> bool:
        """Whether the pod at `path` no longer exists or is being deleted."""
        try:
            return bool(self.api.get(path)["metadata"].get("deletionTimestamp"))
        except ApiError as error:
            if error.status == 404:
                return True
            raise

    # --- one pod ---------------------------------------------------------------------------

    def _run_pod(self, pod: dict, run: PodRun) -> None:
        try:
            PodExecution(self, pod, run).execute()
        except Exception as error:
            if isinstance(error, ApiError) and error.status == 404 and self._finished(pod):
                return  # its workflow was stopped: the controller deleted what it reported to
            self.errors.append(f"pod {run.name}: {error!r}")

    def _finished(self, pod: dict) -> bool:
        """Whether the workflow of `pod` is gone or has finished (its task results deleted)."""
        name = pod["metadata"].get("labels", {}).get(LABEL_WORKFLOW)
        try:
            workflow = self.api.get(f"{ARGO}/namespaces/{self.namespace}/workflows/{name}")
        except ApiError as error:
            if error.status == 404:
                return True
            raise
        return workflow.get("status", {}).get("phase") in ("Succeeded", "Failed", "Error")

    def running(self, template: str, delta: int, pod: str) -> None:
        """Count pods of `template` running at once (parallelism is checked against this)."""
        with self._lock:
            key = f"{template}/{pod}"
            if delta > 0:
                self._running.add(key)
            else:
                self._running.discard(key)
            count = sum(1 for k in self._running if k.startswith(f"{template}/"))
            self.max_running[template] = max(self.max_running.get(template, 0), count)


class PodExecution:
    """Runs one bound pod and reports it, as the kubelet and argoexec would."""

    def __init__(self, kubelet: TestKubelet, pod: dict, run: PodRun) -> None:
        self.kubelet = kubelet
        self.api = kubelet.api
        self.pod = pod
        self.run = run
        self.namespace = kubelet.namespace
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        self.main, self.wait = containers["main"], containers["wait"]
        self.init = {c["name"]: c for c in pod["spec"].get("initContainers", [])}["init"]
        init = self.init
        self.executor_env = {e["name"]: e.get("value", "") for e in init.get("env", [])}
        self.template = json.loads(self.executor_env["ARGO_TEMPLATE"])
        self.node_id = self.executor_env["ARGO_NODE_ID"]
        self.volumes = self._volumes()
        self.started = now()

    def _volumes(self) -> dict[str, Path]:
        folders = {}
        for volume in self.pod["spec"].get("volumes", []):
            if "emptyDir" not in volume:
                continue  # only emptyDir volumes are mounted into main (the rest: executor's)
            folder = self.run.workdir / "volumes" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folders[volume["name"]] = folder
        return folders

    def host_path(self, path: str) -> Path | None:
        """Where the main container's `path` is on this machine (through its volume mounts)."""
        best = None
        for mount in self.main.get("volumeMounts", []):
            root = mount["mountPath"].rstrip("/") or "/"
            inside = path == root or path.startswith(root + "/")
            if (
                inside
                and mount["name"] in self.volumes
                and (best is None or len(root) > len(best[0]))
            ):
                best = (root, mount)
        if best is None:
            return None
        root, mount = best
        base = self.volumes[mount["name"]] / mount.get("subPath", "")
        return base / path[len(root) :].lstrip("/")

    # --- steps -----------------------------------------------------------------------------

    def execute(self) -> None:
        self._status_running()
        self._upsert_task_result({})
        self.kubelet.running(self._template_name(), +1, self.run.name)
        try:
            exit_code = self._run_main()
        finally:
            self.kubelet.running(self._template_name(), -1, self.run.name)
        wait_error = self._report_outputs()
        self._status_terminated(exit_code, wait_error)

    def _template_name(self) -> str:
        return self.template.get("name", "")

    def _run_main(self) -> int:
        run = self.run
        run.argv = main_argv(self.main)
        run.env = self._environment()
        # The volume folders live under this machine's /tmp, which a mount at /tmp would hide:
        # the pod's folder is first bound at STAGING, the mounts are made from there (outer
        # paths first), and STAGING is let go.
        # The checkout and the Python it runs may live under a mount target too (a clone in
        # /tmp): each is bound at STAGING/keep-N first and bound back over the volume after.
        staging = shlex.quote(STAGING)
        setup = [f"mount --bind {shlex.quote(str(run.workdir))} {staging}"]
        targets = sorted(m["mountPath"] for m in self.main.get("volumeMounts", []))
        kept = hidden_by(targets)
        for number, path in enumerate(kept):
            keep = shlex.quote(f"{STAGING}/keep-{number}")
            setup.append(f"mkdir -p {keep} && mount --bind {shlex.quote(str(path))} {keep}")
        for target in targets:
            source = self.host_path(target)
            if source is None:
                continue
            inside = f"{STAGING}/{source.relative_to(run.workdir)}"
            setup.append(
                f"mkdir -p {shlex.quote(target)} && "
                f"mount --bind {shlex.quote(inside)} {shlex.quote(target)}"
            )
        for number, path in enumerate(kept):
            keep = shlex.quote(f"{STAGING}/keep-{number}")
            here = shlex.quote(str(path))
            setup.append(f"mkdir -p {here} && mount --bind {keep} {here} && umount {keep}")
        setup.append(f"umount {staging}")
        workdir = self.main.get("workingDir") or "/tmp"  # the image's WORKDIR
        script = " && ".join([*setup, f"cd {shlex.quote(workdir)}", 'exec "$@"'])
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
            *run.argv,
        ]
        progress_file = self._progress_file()
        with run.log.open("wb") as log:
            run.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=run.env
            )
            last = ""
            while run.process.poll() is None:
                time.sleep(0.5)
                last = self._report_progress(progress_file, last)
            self._report_progress(progress_file, last)
        code = run.process.returncode
        run.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        return run.exit_code

    def _environment(self) -> dict[str, str]:
        env = {"PATH": f"{self.kubelet.venv_bin}:{SYSTEM_PATH}"}
        env |= IMAGE_ENV
        env["HOSTNAME"] = self.run.name
        for source in self.main.get("envFrom", []):
            env |= self._env_from(source)
        for variable in self.main.get("env", []):
            value = self._env_value(variable)
            if value is not None:
                env[variable["name"]] = value
        return env

    def _env_from(self, source: dict) -> dict[str, str]:
        prefix = source.get("prefix", "")
        for kind, path in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
            if kind not in source:
                continue
            reference = source[kind]
            try:
                data = self.api.get(
                    f"/api/v1/namespaces/{self.namespace}/{path}/{reference['name']}"
                )
            except ApiError as error:
                if error.status == 404 and reference.get("optional"):
                    return {}
                raise
            values = data.get("data") or {}
            if kind == "secretRef":
                import base64

                values = {k: base64.b64decode(v).decode() for k, v in values.items()}
            return {prefix + k: v for k, v in values.items()}
        return {}

    def _env_value(self, variable: dict) -> str | None:
        if "valueFrom" not in variable:
            return variable.get("value", "")
        source = variable["valueFrom"]
        if "fieldRef" in source:
            meta = self.pod["metadata"]
            fields = {
                "metadata.name": meta["name"],
                "metadata.namespace": meta["namespace"],
                "metadata.uid": meta["uid"],
                "spec.nodeName": NODE,
                "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
            }
            return fields[source["fieldRef"]["fieldPath"]]
        raise ValueError(f"unsupported env source for {variable['name']}: {sorted(source)}")

    def _progress_file(self) -> Path | None:
        path = next(
            (e.get("value") for e in self.main.get("env", []) if e["name"] == "ARGO_PROGRESS_FILE"),
            None,
        )
        return self.host_path(path) if path else None

    def _report_progress(self, progress_file: Path | None, last: str) -> str:
        """Patch the task result with the file's last `N/M` line when it changed (as argoexec)."""
        if progress_file is None or not progress_file.is_file():
            return last
        lines = progress_file.read_text(errors="replace").strip().splitlines()
        latest = lines[-1].strip() if lines else ""
        if latest and latest != last:
            self._patch_task_result({"progress": latest})
        return latest

    def _report_outputs(self) -> str | None:
        """The wait container's job: output parameters into the task result. Returns its error."""
        outputs = json.loads(json.dumps(self.template.get("outputs") or {}))
        error = None
        for parameter in outputs.get("parameters", []):
            path = (parameter.get("valueFrom") or {}).get("path")
            if not path:
                continue
            host = self.host_path(path)
            if host is not None and host.is_file():
                value = host.read_text()
            elif "default" in parameter["valueFrom"]:
                value = parameter["valueFrom"]["default"]
            else:
                error = error or f"open {path}: no such file or directory"
                continue
            parameter["value"] = value.removesuffix("\n")
        if outputs:
            self._patch_task_result({"outputs": outputs})
        self._patch_task_result({"metadata": {"labels": {LABEL_COMPLETED: "true"}}})
        return error

    # --- API writes ------------------------------------------------------------------------

    def _task_result_path(self) -> str:
        return f"{ARGO}/namespaces/{self.namespace}/workflowtaskresults"

    def _upsert_task_result(self, result: dict) -> None:
        workflow = self.pod["metadata"]["labels"][LABEL_WORKFLOW]
        body = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "WorkflowTaskResult",
            "metadata": {
                "name": self.node_id,
                "labels": {LABEL_WORKFLOW: workflow, LABEL_COMPLETED: "false"},
                "ownerReferences": [
                    {
                        "apiVersion": "argoproj.io/v1alpha1",
                        "kind": "Workflow",
                        "name": workflow,
                        "uid": self._executor_value("ARGO_WORKFLOW_UID"),
                    }
                ],
            },
            **result,
        }
        try:
            self.api.create(self._task_result_path(), body)
        except ApiError as error:
            if error.status != 409:
                raise
            self._patch_task_result(result)

    def _patch_task_result(self, patch: dict) -> None:
        self.api.merge_patch(f"{self._task_result_path()}/{self.node_id}", patch)

    def _executor_value(self, name: str) -> str:
        for variable in self.wait.get("env", []):
            if variable["name"] == name:
                return variable.get("value", "")
        raise KeyError(name)

    def _pod_status_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.run.name}/status"

    def _status_running(self) -> None:
        init = self._container_status(
            self.init,
            {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": self.started,
                    "finishedAt": self.started,
                }
            },
        )
        status = {
            "phase": "Running",
            "startTime": self.started,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "initContainerStatuses": [init],
            "containerStatuses": [
                self._container_status(c, {"running": {"startedAt": self.started}})
                for c in (self.wait, self.main)
            ],
        }
        self.api.merge_patch(self._pod_status_path(), {"status": status})

    def _status_terminated(self, exit_code: int, wait_error: str | None) -> None:
        finished = now()

        def terminated(code: int, message: str | None = None) -> dict:
            state = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": self.started,
                "finishedAt": finished,
            }
            if message:
                state["message"] = message
            return {"terminated": state}

        wait_code = 1 if wait_error else 0
        phase = "Succeeded" if exit_code == 0 and wait_code == 0 else "Failed"
        status = {
            "phase": phase,
            "containerStatuses": [
                self._container_status(self.wait, terminated(wait_code, wait_error)),
                self._container_status(self.main, terminated(exit_code)),
            ],
        }
        self.api.merge_patch(self._pod_status_path(), {"status": status})

    @staticmethod
    def _container_status(container: dict, state: dict) -> dict:
        return {
            "name": container["name"],
            "ready": "running" in state,
            "restartCount": 0,
            "image": container.get("image", ""),
            "imageID": "",
            "state": state,
        }
