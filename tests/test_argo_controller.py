"""shardflow's rendered Argo DAG under Argo's real workflow-controller (tests/control_plane.py).

Workflows are created through the Kubernetes API, as `argo submit -p` does without an Argo
Server; the controller is the upstream program and decides every phase, retry and parameter
substitution. tests/kubelet.py runs the pods it creates with this checkout's `shardflow`,
against a real S3 server (moto) on 127.0.0.1 reached through a fault-injecting proxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import control_plane
import pytest
import yaml
from control_plane import ControlPlane
from kube_api import ARGO, KubeAPI, wait_for
from kubelet import TestKubelet
from servers import Fault, S3Proxy, S3Server

from helpers import good_shard, sample_members, write_tar

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "argo" / "workflow.yaml"
TEMPLATE = REPO / "argo" / "workflowtemplate.yaml"
RESHARD_TEMPLATE = REPO / "argo" / "reshard-workflowtemplate.yaml"
FINISHED = ("Succeeded", "Failed", "Error")
RUN_TIMEOUT = 300.0


class StuckWorkflow(Exception):
    """The controller keeps a workflow Running that can never finish."""


@dataclass
class Cluster:
    plane: ControlPlane
    api: KubeAPI
    kubelet: TestKubelet
    s3: S3Server
    proxy: S3Proxy

    @property
    def namespaced(self) -> str:
        return f"{ARGO}/namespaces/{self.plane.namespace}"

    def submit(self, manifest: dict, **parameters: str) -> str:
        """Create the workflow as `argo submit -p NAME=VALUE` does: each given parameter becomes
        {name, value} (enum and description dropped), ahead of the others."""
        manifest = json.loads(json.dumps(manifest))
        spec = manifest["spec"]
        given = [{"name": name, "value": value} for name, value in parameters.items()]
        rest = [
            p
            for p in spec.get("arguments", {}).get("parameters", [])
            if p["name"] not in parameters
        ]
        spec.setdefault("arguments", {})["parameters"] = given + rest
        created = self.api.create(f"{self.namespaced}/workflows", manifest)
        return created["metadata"]["name"]

    def terminate(self, name: str) -> None:
        """What `argo terminate` does; waits for the controller to finish the workflow."""
        self.api.merge_patch(
            f"{self.namespaced}/workflows/{name}", {"spec": {"shutdown": "Terminate"}}
        )
        self.wait_finished(name, timeout=60)

    def workflow(self, name: str) -> dict:
        return self.api.get(f"{self.namespaced}/workflows/{name}")

    def wait_finished(self, name: str, timeout: float = RUN_TIMEOUT) -> dict:
        def finished() -> dict | None:
            self.plane.check_running()
            if self.kubelet.errors:  # a pod the kubelet could not run would stay Pending
                raise StuckWorkflow(f"the test kubelet failed: {self.kubelet.errors}")
            workflow = self.workflow(name)
            stuck = controller_errors(workflow)
            if stuck:  # the controller errs on each reconcile: the workflow would hang for days
                raise StuckWorkflow(f"{name}: the controller rejects a node: {stuck}")
            return workflow if workflow.get("status", {}).get("phase") in FINISHED else None

        try:
            return wait_for(f"workflow {name} to finish", finished, timeout, interval=1)
        except (TimeoutError, StuckWorkflow) as error:
            description = self.describe(name)
            # Stop it, as `argo stop` would, so that it takes no pods from the next test.
            self.api.merge_patch(
                f"{self.namespaced}/workflows/{name}", {"spec": {"shutdown": "Stop"}}
            )
            raise AssertionError(f"{error}\n{description}") from None

    def describe(self, name: str) -> str:
        """What a failing test prints: node phases and messages, kubelet errors, controller log."""
        status = self.workflow(name).get("status", {})
        nodes = sorted(
            f"  {n.get('displayName')} [{n['type']}] {n.get('phase')} {n.get('message', '')}"
            for n in status.get("nodes", {}).values()
        )
        return "\n".join(
            [
                f"phase {status.get('phase')}: {status.get('message', '')}",
                *nodes,
                f"kubelet errors: {self.kubelet.errors}",
                self.plane.logs(),
            ]
        )

    def pods_of(self, name: str) -> list[str]:
        """Every pod the kubelet was given for workflow `name` (deleted ones included)."""
        return sorted(run for run in self.kubelet.runs if run.startswith(f"{name}-"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("controlplane")
    plane = ControlPlane(workdir)
    kubelet = None
    with S3Server() as s3, S3Proxy(s3.url) as proxy:
        try:
            api = plane.start()
            kubelet = TestKubelet(api, plane.namespace, workdir / "pods").start()
            credentials = {k: v for k, v in s3.credentials().items()}
            api.create(
                f"/api/v1/namespaces/{plane.namespace}/secrets",
                {"metadata": {"name": "shardflow-credentials"}, "stringData": credentials},
            )
            yield Cluster(plane, api, kubelet, s3, proxy)
        finally:
            if kubelet:
                kubelet.stop()
            plane.stop()


def rendered(path: Path = WORKFLOW) -> dict:
    return yaml.safe_load(path.read_text())


def storage(cluster: Cluster) -> str:
    return json.dumps({"endpoint_url": cluster.proxy.url})


def upload_shards(
    cluster: Cluster, tmp_path: Path, count: int, samples: int = 3
) -> tuple[str, str, str]:
    """`count` shards of real JPEG photos-like images in a new bucket: (bucket, input, output)."""
    bucket = cluster.s3.new_bucket()
    for index in range(count):
        shard = good_shard(tmp_path / f"in-{index:06d}.tar", count=samples, width=48, height=40)
        cluster.s3.put(bucket, f"in/{shard.name}", shard.read_bytes())
    last = f"{count - 1:06d}"
    return bucket, f"s3://{bucket}/in/in-{{000000..{last}}}.tar", f"s3://{bucket}/out/"


def nodes(workflow: dict, kind: str | None = None, template: str | None = None) -> list[dict]:
    found = workflow["status"].get("nodes", {}).values()
    return [
        n
        for n in found
        if (kind is None or n["type"] == kind)
        and (template is None or n.get("templateName") == template)
    ]


def controller_errors(workflow: dict) -> list[str]:
    """Messages of nodes the controller itself put in Error (not a pod's failure), e.g. an
    invalid display name: it repeats them on every reconcile and the DAG never completes."""
    return [
        f"{n.get('displayName')}: {n.get('message')}"
        for n in workflow.get("status", {}).get("nodes", {}).values()
        if n.get("phase") == "Error"
        and n["type"] != "Pod"
        and workflow["status"]["phase"] == "Running"
    ]


def plan_finished(cluster: Cluster, name: str) -> dict | None:
    """The plan pod node once the controller has its phase and outputs."""
    found = nodes(cluster.workflow(name), "Pod", "plan")
    if found and found[0].get("phase") in FINISHED and found[0].get("outputs"):
        return found[0]
    return None


def task_pods(workflow: dict, index: int) -> list[dict]:
    """The augment pod nodes of task `index` (one per attempt), oldest first."""
    pods = [
        n
        for n in nodes(workflow, "Pod", "augment")
        if {"name": "task-index", "value": str(index)} in n["inputs"]["parameters"]
    ]
    return sorted(pods, key=lambda n: n["startedAt"])


def output(node: dict, name: str) -> str:
    return next(p["value"] for p in node["outputs"]["parameters"] if p["name"] == name)


def global_output(workflow: dict, name: str) -> str:
    return next(
        p["value"] for p in workflow["status"]["outputs"]["parameters"] if p["name"] == name
    )


def by_reference(template: dict) -> dict:
    """A Workflow that runs the installed WorkflowTemplate `template`, as the UI's form submits."""
    name = template["metadata"]["name"]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{name}-"},
        "spec": {"workflowTemplateRef": {"name": name}},
    }


def expected_display_name(manifest: dict, task_index: int) -> str:
    """The augment pod's display name as the rendered manifest asks for it (Argo's default,
    `augment(i:i)`, when the template has no display-name annotation)."""
    augment = next(t for t in manifest["spec"]["templates"] if t["name"] == "augment")
    annotation = (augment.get("annotations") or {}).get("workflows.argoproj.io/display-name")
    if annotation is None:
        return f"augment({task_index}:{task_index})"
    return annotation.replace("{{inputs.parameters.task-index}}", str(task_index))


def test_missing_go_builds_fail_the_suite_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(control_plane, "BIN", tmp_path)
    with pytest.raises(control_plane.MissingBuild, match="make controlplane"):
        ControlPlane(tmp_path)


# --- the control plane itself -------------------------------------------------------------


def test_the_controller_creates_the_plan_pod_of_a_submitted_workflow(cluster: Cluster) -> None:
    """The wiring: a Workflow created through the API is picked up by the real controller,
    which creates the plan pod the kubelet binds to its Node and runs; its outputs reach the
    controller through the task result. (The bucket does not exist: the rest fails, unretried.)"""
    name = cluster.submit(
        rendered(),
        input="s3://nothing/in-{000000..000001}.tar",
        output="s3://nothing/out/",
        retries="0",
    )
    pod = wait_for(f"a pod of {name}", lambda: cluster.pods_of(name) or None, 60)[0]
    spec = cluster.api.get(f"/api/v1/namespaces/{cluster.plane.namespace}/pods/{pod}")
    assert spec["spec"]["nodeName"] == "shardflow-test-node"
    main = next(c for c in spec["spec"]["containers"] if c["name"] == "main")
    assert main["command"][:2] == ["/var/run/argo/argoexec", "emissary"]
    assert main["args"][0] == "plan"
    assert [c["name"] for c in spec["spec"]["initContainers"]] == ["init"]
    plan = wait_for("plan's outputs", lambda: plan_finished(cluster, name), RUN_TIMEOUT)
    assert plan["phase"] == "Succeeded", cluster.describe(name)
    assert output(plan, "tasks") == "2"
    assert output(plan, "outputs") == "s3://nothing/out/in-{000000..000001}.tar"
    cluster.terminate(name)


# --- scenarios ------------------------------------------------------------------------------


def test_four_shards_with_the_seed_recipe_succeed(cluster: Cluster, tmp_path: Path) -> None:
    """argo/workflow.yaml as rendered, over 4 shards: Succeeded; every output verifies; the
    augment nodes carry the rendered display names; plan's `tasks` output drives withSequence."""
    manifest = rendered()
    bucket, inputs, outputs = upload_shards(cluster, tmp_path, 4)
    name = cluster.submit(
        manifest,
        input=inputs,
        output=outputs,
        recipe="seed",
        **{"storage-options": storage(cluster)},
    )
    workflow = cluster.wait_finished(name)
    assert workflow["status"]["phase"] == "Succeeded", cluster.describe(name)

    (plan,) = nodes(workflow, "Pod", "plan")
    assert output(plan, "tasks") == "4"
    augments = nodes(workflow, "Pod", "augment")
    assert len(augments) == int(output(plan, "tasks"))
    # ARGO_PROGRESS_FILE reached the controller: one shard is 100 units, all done.
    assert [n.get("progress") for n in augments] == ["100/100"] * 4
    # The display name applies to each task's node (its Retry node, parent of the pods).
    tasks = nodes(workflow, "Retry", "augment")
    assert sorted(n["displayName"] for n in tasks) == sorted(
        expected_display_name(manifest, index) for index in range(4)
    )
    keys = cluster.s3.keys(bucket)
    assert [k for k in keys if k.endswith(".tar") and k.startswith("out/")] == [
        f"out/in-{index:06d}.tar" for index in range(4)
    ]
    assert "out/verify-report.json" in keys
    report = json.loads(cluster.s3.get(bucket, "out/verify-report.json"))
    assert report["passed"] is True and report["summary"]["status"]["ok"] == 4, report
    assert global_output(workflow, "verify-summary").startswith("verify: OK: 4 of 4 shards passed")


def test_the_workflow_template_submitted_by_reference(cluster: Cluster, tmp_path: Path) -> None:
    """The WorkflowTemplate installed once, then a Workflow with workflowTemplateRef and the
    parameters the UI form submits."""
    template = rendered(TEMPLATE)
    cluster.api.create(f"{cluster.namespaced}/workflowtemplates", template)
    bucket, inputs, outputs = upload_shards(cluster, tmp_path, 2)
    reference = by_reference(template)
    name = cluster.submit(
        reference,
        input=inputs,
        output=outputs,
        recipe="seed",
        **{"storage-options": storage(cluster), "on-error": "fail", "cpu": "1"},
    )
    workflow = cluster.wait_finished(name)
    assert workflow["status"]["phase"] == "Succeeded", cluster.describe(name)
    assert len(nodes(workflow, "Pod", "augment")) == 2
    assert {"out/in-000000.tar", "out/in-000001.tar"} <= set(cluster.s3.keys(bucket))
    augment_pod = next(
        p
        for p in cluster.pods_of(name)
        if p in cluster.kubelet.runs and "augment" in cluster.kubelet.runs[p].argv
    )
    assert "--on-error=fail" in cluster.kubelet.runs[augment_pod].argv


def test_two_hundred_shards_ten_per_task_respect_parallelism(
    cluster: Cluster, tmp_path: Path
) -> None:
    """200 shards at 10 shards per task: 20 augment nodes, never more pods at once than the
    workflow's parallelism (rendered with `shardflow render --parallelism 4`)."""
    rendering = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardflow.workflows.cli",
            "render",
            "--parallelism",
            "4",
            "--out",
            str(tmp_path / "rendered"),
            "--write",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendering.returncode == 0, rendering.stderr
    manifest = rendered(tmp_path / "rendered" / "workflow.yaml")
    assert manifest["spec"]["parallelism"] == 4
    bucket, inputs, outputs = upload_shards(cluster, tmp_path, 200, samples=1)
    name = cluster.submit(
        manifest,
        input=inputs,
        output=outputs,
        **{"shards-per-task": "10", "storage-options": storage(cluster)},
    )
    workflow = cluster.wait_finished(name, timeout=600)
    assert workflow["status"]["phase"] == "Succeeded", cluster.describe(name)
    (plan,) = nodes(workflow, "Pod", "plan")
    assert output(plan, "tasks") == "20"
    assert len(nodes(workflow, "Pod", "augment")) == 20
    assert len(nodes(workflow, "Pod", "verify")) == 20  # verify batches no smaller than augment's
    assert 2 <= cluster.kubelet.max_running["augment"] <= 4
    assert (
        len([k for k in cluster.s3.keys(bucket) if k.startswith("out/") and k.endswith(".tar")])
        == 200
    )


def test_a_transient_storage_error_is_retried_by_argo(cluster: Cluster, tmp_path: Path) -> None:
    """Storage answers 503 to every upload of one output until its first pod has failed
    (exit 1, a storage error): Argo's retryStrategy starts a second pod after its backoff, and
    the workflow succeeds."""
    bucket, inputs, outputs = upload_shards(cluster, tmp_path, 2)
    fault = cluster.proxy.add_fault(
        Fault(
            "status",
            method="PUT",
            path=rf"/{bucket}/out/in-000001\.tar",
            status=503,
            code="SlowDown",
        )
    )
    name = cluster.submit(
        rendered(),
        input=inputs,
        output=outputs,
        **{"storage-options": storage(cluster), "retry-backoff": "2s"},
    )

    def first_attempt_failed() -> bool:
        runs = [cluster.kubelet.runs[p] for p in cluster.pods_of(name)]
        return any(r.exit_code == 1 and "--task-index=1" in r.argv for r in runs)

    wait_for("the faulty shard's pod to fail", first_attempt_failed, RUN_TIMEOUT)
    assert cluster.proxy.requests("PUT", fault.path), "the fault never applied"
    cluster.proxy.clear()
    workflow = cluster.wait_finished(name)
    assert workflow["status"]["phase"] == "Succeeded", cluster.describe(name)
    assert [n["phase"] for n in task_pods(workflow, 1)] == ["Failed", "Succeeded"]
    assert task_pods(workflow, 1)[0]["outputs"]["exitCode"] == "1"
    assert [n["phase"] for n in task_pods(workflow, 0)] == ["Succeeded"]
    assert "out/in-000001.tar" in cluster.s3.keys(bucket)


def test_a_damaged_shard_fails_its_task_once_and_verify_names_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """One input shard is not a tar: its task fails with the data-error code and is not retried,
    verify still runs (and report after it), the workflow is Failed and verify's summary names
    the shard."""
    bucket, inputs, outputs = upload_shards(cluster, tmp_path, 3)
    damaged = write_tar(tmp_path / "damaged.tar", [("a.jpg", b"x" * 700)]).read_bytes()[:900]
    cluster.s3.put(bucket, "in/in-000001.tar", damaged + b"\x01" * 300)
    name = cluster.submit(
        rendered(),
        input=inputs,
        output=outputs,
        retries="1",
        **{"storage-options": storage(cluster), "retry-backoff": "2s"},
    )
    workflow = cluster.wait_finished(name)
    assert workflow["status"]["phase"] == "Failed", cluster.describe(name)
    task_one = task_pods(workflow, 1)
    assert len(task_one) == 1, "a damaged shard was retried: " + cluster.describe(name)
    assert task_one[0]["outputs"]["exitCode"] == "3"
    # Each verify batch succeeds once its part is written; the merge (report) is the verdict.
    assert [n["phase"] for n in nodes(workflow, "Pod", "verify")] == ["Succeeded"] * 3
    (report,) = nodes(workflow, "Pod", "report")
    assert report["phase"] == "Failed"
    report = json.loads(cluster.s3.get(bucket, "out/verify-report.json"))
    assert report["summary"]["status"] == {"ok": 2, "failed": 0, "incomplete": 0, "missing": 1}
    assert f"s3://{bucket}/out/in-000001.tar" in global_output(workflow, "verify-summary")


def test_a_value_outside_an_enum_is_refused_by_plan(cluster: Cluster) -> None:
    """`argo submit -p on-error=explode` drops the enum, so Argo accepts it: plan refuses it
    (usage error, not retried) and no augment pod is ever created."""
    name = cluster.submit(
        rendered(),
        input="s3://b/in-{000000..000003}.tar",
        output="s3://b/out/",
        **{"on-error": "explode"},
    )
    workflow = cluster.wait_finished(name)
    assert workflow["status"]["phase"] == "Failed", cluster.describe(name)
    (plan,) = nodes(workflow, "Pod", "plan")
    assert plan["outputs"]["exitCode"] == "2"
    assert nodes(workflow, "Pod", "augment") == []
    assert not any("augment" in cluster.kubelet.runs[p].argv for p in cluster.pods_of(name))
    assert "explode" in cluster.kubelet.runs[cluster.pods_of(name)[0]].log.read_text()


def test_the_reshard_template_splits_merges_and_shuffles(cluster: Cluster, tmp_path: Path) -> None:
    """The reshard WorkflowTemplate (argo/reshard-workflowtemplate.yaml) by reference: 3 inputs
    of 4 samples into 6 outputs of 2, shuffled; count, plan and write run as the controller
    schedules them, verify in 3 batches of 2 outputs, then report merges them and checks the
    lineage; Succeeded, and every input sample is in exactly one output."""
    template = rendered(RESHARD_TEMPLATE)
    cluster.api.create(f"{cluster.namespaced}/workflowtemplates", template)
    bucket = cluster.s3.new_bucket()
    keys = []
    for shard in range(3):
        members = []
        for index in range(4):
            key = f"s{shard}-{index:04d}"
            keys.append(key)
            members += sample_members(key, seed=shard * 4 + index, width=32, height=24)
        tar = write_tar(tmp_path / f"in-{shard:06d}.tar", members)
        cluster.s3.put(bucket, f"in/{tar.name}", tar.read_bytes())
    reference = by_reference(template)
    name = cluster.submit(
        reference,
        inputs=f"s3://{bucket}/in/in-{{000000..000002}}.tar",
        outputs=f"s3://{bucket}/re/out-%06d.tar",
        **{
            "samples-per-shard": "2",
            "shuffle": "7",
            "shards-per-task": "2",
            "storage-options": storage(cluster),
        },
    )
    workflow = cluster.wait_finished(name)
    assert workflow["status"]["phase"] == "Succeeded", cluster.describe(name)
    display = sorted(n["displayName"] for n in nodes(workflow, "Retry"))
    assert [d for d in display if d.startswith("write-")] == ["write-0", "write-1", "write-2"]
    assert [d for d in display if d.startswith("verify-")] == ["verify-0", "verify-1", "verify-2"]
    (report,) = nodes(workflow, "Pod", "report")
    assert report["phase"] == "Succeeded"
    summary = global_output(workflow, "verify-summary")
    assert summary.startswith("verify: OK: 6 of 6 shards passed"), summary
    stored = set(cluster.s3.keys(bucket))
    for beside in ("verify-report.json", "dataset-report.json", "out.shardindex.json"):
        assert f"re/{beside}" in stored, sorted(stored)
    tables = sorted(k for k in stored if k.startswith("re/dataset-samples/") and ".jsonl" in k)
    assert tables == [f"re/dataset-samples/part-{i:06d}.jsonl" for i in range(3)]
    assert not [k for k in stored if k.startswith("re/.reshard/verify-parts/")]  # merged
    written = sorted(k for k in stored if k.startswith("re/out-") and k.endswith(".tar"))
    assert written == [f"re/out-{index:06d}.tar" for index in range(6)]
    lineage = []
    for output in written:
        manifest = json.loads(cluster.s3.get(bucket, output[: -len(".tar")] + ".manifest.json"))
        lineage += [sample["from"]["key"] for sample in manifest["samples"]]
    assert sorted(lineage) == sorted(keys)
    assert lineage != keys, "shuffle=7 kept the input order"
