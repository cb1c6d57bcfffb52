"""A real Kubernetes control plane with Argo's workflow-controller, on 127.0.0.1.

etcd, kube-apiserver and workflow-controller are the upstream programs, built from their Go
modules by `make controlplane` into tests/.bin (see tests/controlplane/*/go.mod for the
versions). Argo's CRDs are read from the argo-workflows module in the Go module cache, so
they always match the controller. There is no scheduler, controller-manager or kubelet:
tests/kubelet.py binds and runs the pods, and this module creates what the missing
controllers would (the namespace's default service account).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import yaml
from kube_api import ARGO, ApiError, KubeAPI, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "tests" / ".bin"
ARGO_MODULE_DIR = REPO / "tests" / "controlplane" / "argo"
ARGO_MODULE = "github.com/argoproj/argo-workflows/v3"
PROGRAMS = ("etcd", "kube-apiserver", "workflow-controller")
NAMESPACE = "shardflow-test"
# The image the controller names in its init and wait containers; never pulled here, since
# tests/kubelet.py does the executor's part itself.
EXECUTOR_IMAGE = "quay.io/argoproj/argoexec:v3.7.18"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 120.0


class MissingBuild(RuntimeError):
    """A control-plane program was not built: the message says how to build it."""


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if not (BIN / name).is_file()]


def require_programs() -> None:
    """Fail (never skip) when the Go builds are missing: the scenarios are part of `make test`."""
    missing = missing_programs()
    if not missing:
        return
    go = shutil.which("go")
    how = "run `make controlplane`" if go else "install Go >= 1.25.7, then run `make controlplane`"
    raise MissingBuild(f"{', '.join(missing)} not built in {BIN}: {how}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def argo_crds() -> list[dict]:
    """Argo's minimal CRDs (the ones its standard install applies), from the module cache."""
    found = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", ARGO_MODULE],
        cwd=ARGO_MODULE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    folder = Path(found.stdout.strip()) / "manifests" / "base" / "crds" / "minimal"
    return [yaml.safe_load(path.read_text()) for path in sorted(folder.glob("argoproj.io_*.yaml"))]


class Program:
    """One program of the control plane, its output in a log file kept for failures."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / name), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ControlPlane:
    """etcd + kube-apiserver + Argo's CRDs and workflow-controller, in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        require_programs()
        self.workdir = workdir
        self.programs: list[Program] = []
        self.token = secrets.token_hex(16)
        self.api: KubeAPI | None = None
        self.namespace = NAMESPACE

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> KubeAPI:
        etcd_url = self._start_etcd()
        self.api = self._start_apiserver(etcd_url)
        self._install_argo()
        self._start_controller()
        return self.api

    def stop(self) -> None:
        for program in reversed(self.programs):
            program.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.programs)

    def check_running(self) -> None:
        for program in self.programs:
            program.check_running()

    # --- the programs ----------------------------------------------------------------------

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Program:
        program = Program(name, args, self.workdir / f"{name}.log", env)
        self.programs.append(program)
        return program

    def _start_etcd(self) -> str:
        client, peer = f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}"
        etcd = self._start(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # a throw-away store: durability costs seconds per test
                "--log-level=warn",
            ],
        )
        wait_for("etcd", lambda: self._etcd_healthy(etcd, client), STARTUP_TIMEOUT)
        return client

    @staticmethod
    def _etcd_healthy(etcd: Program, url: str) -> bool:
        import urllib.request

        etcd.check_running()
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return b'"true"' in response.read()

    def _start_apiserver(self, etcd_url: str) -> KubeAPI:
        pki = self.workdir / "pki"
        pki.mkdir()
        key = pki / "service-accounts.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        tokens = pki / "tokens.csv"
        tokens.write_text(f'{self.token},shardflow-test,shardflow-test,"system:masters"\n')
        port = free_port()
        apiserver = self._start(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={HOST}",
                f"--advertise-address={HOST}",
                f"--secure-port={port}",
                f"--cert-dir={pki}",  # a self-signed serving certificate is generated there
                f"--token-auth-file={tokens}",
                "--authorization-mode=AlwaysAllow",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # No token controller runs, so pods get no service-account token volume; the
                # test kubelet needs none. Service accounts are still created for realism.
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        certificate = pki / "apiserver.crt"
        wait_for("kube-apiserver's certificate", lambda: certificate.is_file(), STARTUP_TIMEOUT)
        api = KubeAPI(f"https://{HOST}:{port}", self.token, certificate)

        def ready() -> bool:
            apiserver.check_running()
            return api.healthy()

        wait_for("kube-apiserver /readyz", ready, STARTUP_TIMEOUT)
        return api

    def _install_argo(self) -> None:
        api = self.api
        assert api is not None
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in argo_crds():
            api.create(crds, crd)
        for crd in argo_crds():
            name = crd["metadata"]["name"]
            wait_for(f"CRD {name} established", lambda n=name: _established(api, crds, n), 60)
        api.create("/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        namespaced = f"/api/v1/namespaces/{self.namespace}"
        api.create(f"{namespaced}/serviceaccounts", {"metadata": {"name": "default"}})
        api.create(
            f"{namespaced}/configmaps",
            {
                "metadata": {"name": "workflow-controller-configmap"},
                # Metrics servers listen on every interface at fixed ports: off here.
                "data": {"metricsConfig": "enabled: false\n"},
            },
        )
        wait_for(
            "Argo's workflows API",
            lambda: api.get(f"{ARGO}/namespaces/{self.namespace}/workflows") is not None,
            60,
        )

    def _start_controller(self) -> None:
        kubeconfig = self.workdir / "kubeconfig"
        assert self.api is not None
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": self.api.url,
                                "certificate-authority": str(
                                    self.workdir / "pki" / "apiserver.crt"
                                ),
                            },
                        }
                    ],
                    "users": [{"name": "test", "user": {"token": self.token}}],
                    "contexts": [
                        {
                            "name": "test",
                            "context": {
                                "cluster": "test",
                                "user": "test",
                                "namespace": self.namespace,
                            },
                        }
                    ],
                    "current-context": "test",
                }
            )
        )
        self._start(
            "workflow-controller",
            [
                f"--kubeconfig={kubeconfig}",
                "--namespaced",
                f"--managed-namespace={self.namespace}",
                "--configmap=workflow-controller-configmap",
                f"--executor-image={EXECUTOR_IMAGE}",
                "--workflow-workers=4",
                "--qps=100",
                "--burst=200",
            ],
            env={
                "LEADER_ELECTION_DISABLE": "true",
                # Argo's documented knob: how soon a workflow is looked at again (default 10 s).
                "DEFAULT_REQUEUE_TIME": "1s",
            },
        )
        time.sleep(0.5)
        self.check_running()


def _established(api: KubeAPI, crds: str, name: str) -> bool:
    try:
        conditions = api.get(f"{crds}/{name}").get("status", {}).get("conditions", [])
    except ApiError:
        return False
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
