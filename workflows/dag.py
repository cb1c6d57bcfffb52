"""The Argo DAG in Hera: plan -> augment x N (withSequence) -> verify.

One definition gives both manifests in argo/: the WorkflowTemplate a team installs once and
submits from the Argo UI form, and the standalone Workflow for `argo submit`. It is also the
DAG that `shardflow run` executes on one machine, so every choice below is exercised by tests
without a cluster.

Why the DAG looks like this:
- The manifest never grows with the dataset. A `plan` pod expands the input pattern, checks
  the parameters once (a typo fails one small pod, not a thousand), and outputs the task
  count; augment tasks fan out over `withSequence` indices and each expands the pattern itself
  to find its batch. 10 shards and 1,000,000 shards give the same manifest.
- Each task is a Container template running the `shardflow` CLI, so the UI shows a command
  line a person can copy and run. Values are bound as `--option=value` and positionals come
  after `--`, so no parameter value can turn into an option (parameters are untrusted).
- `--skip-existing` makes a retry or a resubmission redo only the shards without a manifest.
- verify runs after every augment task, also when some failed (`failFast: false` and a
  depends expression), so its report names the missing shards; the DAG's result is verify's.
- Kubernetes cannot take CPU or memory quantities from a template variable, so resources come
  from a podSpecPatch whose values are restricted by enums (a free string could inject
  arbitrary pod spec). Argo cannot take `parallelism` from a parameter at all
  (argoproj/argo-workflows#1780): it is set when rendering or submitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hera.workflows import (
    DAG,
    Container,
    EmptyDirVolume,
    Parameter,
    Resources,
    RetryStrategy,
    SecretEnvFrom,
    Task,
    Workflow,
    WorkflowTemplate,
)
from hera.workflows.models import (
    Backoff,
    Capabilities,
    PodGC,
    PodSecurityContext,
    SeccompProfile,
    SecurityContext,
    Sequence,
    TTLStrategy,
    ValueFrom,
)

from shardflow.steps import __version__
from shardflow.steps.failures import DEFAULT_MAX_FAILED
from shardflow.steps.recipe import BUILTIN_RECIPES

from . import yamltext
from .plan import AUTO, MAX_TASKS

NAME = "shardflow-augment"
ENTRYPOINT = "main"
DEFAULT_IMAGE = f"shardflow:{__version__}"
DEFAULT_PARALLELISM = 32
USER_ID = 10001  # the image's non-root user (containers/Dockerfile)
TMP = "/tmp"
PLAN_DIR = f"{TMP}/plan"
SUMMARY_FILE = f"{TMP}/verify-summary.txt"
CREDENTIALS_SECRET = "shardflow-credentials"

PLAN_OUTPUTS = ("tasks", "shards-per-task", "outputs", "report", "sample-sheet")
CPU_CHOICES = ("1", "2", "4", "8", "16")
MEMORY_CHOICES = ("1Gi", "2Gi", "4Gi", "8Gi", "16Gi", "32Gi")
RETRY_CHOICES = ("0", "1", "2", "3", "5", "10")

TITLE = "shardflow: augment WebDataset shards"
DESCRIPTION = """\
Augments every shard of a WebDataset (tar shards on any object store) with a recipe, then
verifies the outputs.

1. **plan** expands `input`, checks the parameters and counts the tasks.
2. **augment** runs one pod per batch of shards; each output appears only when complete, with
   a manifest beside it, so a retry or a resubmission redoes only unfinished shards.
3. **verify** checks every output shard and writes `verify-report.json` and
   `verify-samples.png` beside the outputs; its summary is the output `verify-summary`.

Patterns use braces: `gs://bucket/train/train-{000000..000554}.tar`."""


def _parameters() -> list[Parameter]:
    """The workflow's parameters: what the UI form shows, with help and drop-downs."""
    recipes = ", ".join(BUILTIN_RECIPES)
    return [
        Parameter(
            name="input",
            description="Input shards: a URL brace pattern, e.g. "
            "gs://bucket/train/train-{000000..000554}.tar (gs://, s3://, https://).",
        ),
        Parameter(
            name="output",
            description="Output shards: a pattern that expands to as many URLs as input, or a "
            "directory ending in / for shards of the same names.",
        ),
        Parameter(
            name="recipe",
            value="seed",
            description=f"Built-in recipe ({recipes}), a .yaml or .json URL, or inline JSON.",
        ),
        Parameter(
            name="shards-per-task",
            value=AUTO,
            description=f"Shards per augment pod, or {AUTO}: one per pod unless that makes "
            f"more than {MAX_TASKS} pods (a workflow stays responsive up to about 2,000 nodes).",
        ),
        Parameter(
            name="on-error",
            value="skip",
            enum=["skip", "fail"],
            description="A sample that cannot be decoded or processed: skip it (counted and "
            "listed by key in the shard's manifest) or fail its shard.",
        ),
        Parameter(
            name="max-failed",
            value=f"{DEFAULT_MAX_FAILED:g}",
            description="Fail the run when more than this fraction of the samples read failed "
            "(e.g. 0.05 or 5%); a shard whose every sample failed always fails.",
        ),
        Parameter(
            name="cpu",
            value="2",
            enum=list(CPU_CHOICES),
            description="CPU cores per augment and verify pod (request = limit); the step runs "
            "this many threads.",
        ),
        Parameter(
            name="memory",
            value="4Gi",
            enum=list(MEMORY_CHOICES),
            description="Memory per augment and verify pod (request = limit).",
        ),
        Parameter(
            name="retries",
            value="3",
            enum=list(RETRY_CHOICES),
            description="Retries of a pod that fails for a reason that can pass (eviction, OOM "
            "kill, node loss, a storage error), with exponential backoff from 30 s.",
        ),
        Parameter(
            name="image",
            value=DEFAULT_IMAGE,
            description="The shardflow container image (containers/Dockerfile).",
        ),
        Parameter(
            name="service-account",
            value="default",
            description="Kubernetes service account of the pods: bind it to a cloud identity "
            "(GKE Workload Identity, EKS IRSA) to reach the buckets without keys.",
        ),
        Parameter(
            name="storage-options",
            value="{}",
            description='fsspec storage options as JSON, e.g. {"endpoint_url": '
            '"http://minio:9000"} for an S3-compatible store.',
        ),
    ]


def _container_security() -> SecurityContext:
    return SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=Capabilities(drop=["ALL"]),
    )


def _pod_security() -> PodSecurityContext:
    return PodSecurityContext(
        run_as_non_root=True,
        run_as_user=USER_ID,
        run_as_group=USER_ID,
        fs_group=USER_ID,
        seccomp_profile=SeccompProfile(type="RuntimeDefault"),
    )


def _resources_patch() -> str:
    """Requests = limits (Guaranteed QoS: the last pods evicted), from enum-checked parameters."""
    quantities = {
        "cpu": "{{workflow.parameters.cpu}}",
        "memory": "{{workflow.parameters.memory}}",
    }
    patch = {
        "containers": [
            {"name": "main", "resources": {"requests": quantities, "limits": quantities}}
        ]
    }
    return yamltext.dump(patch)


def _retry(expression: str) -> RetryStrategy:
    return RetryStrategy(
        limit="{{workflow.parameters.retries}}",
        retry_policy="Always",
        expression=expression,
        backoff=Backoff(duration="30s", factor="2", cap="10m"),
    )


def _step(name: str, args: list[str], **options: Any) -> Container:
    """A Container template running `shardflow ARGS` with the settings every pod shares."""
    return Container(
        name=name,
        image="{{workflow.parameters.image}}",
        command=["shardflow"],
        args=args,
        env={"SHARDFLOW_STORAGE_OPTIONS": "{{workflow.parameters.storage-options}}"},
        env_from=[SecretEnvFrom(name=CREDENTIALS_SECRET, optional=True)],
        security_context=_container_security(),
        service_account_name="{{workflow.parameters.service-account}}",
        volumes=[EmptyDirVolume(name="tmp", mount_path=TMP, size_limit="1Gi")],
        **options,
    )


def _templates() -> tuple[Container, Container, Container]:
    plan = _step(
        "plan",
        [
            "plan",
            "--shards-per-task={{workflow.parameters.shards-per-task}}",
            "--recipe={{workflow.parameters.recipe}}",
            "--max-failed={{workflow.parameters.max-failed}}",
            f"--max-tasks={MAX_TASKS}",
            f"--write-params={PLAN_DIR}",
            "--",
            "{{workflow.parameters.input}}",
            "{{workflow.parameters.output}}",
        ],
        outputs=[
            Parameter(name=name, value_from=ValueFrom(path=f"{PLAN_DIR}/{name}"))
            for name in PLAN_OUTPUTS
        ],
        resources=Resources(cpu_request="100m", memory_request="256Mi", memory_limit="1Gi"),
        active_deadline_seconds="600",
        retry_strategy=_retry("lastRetry.exitCode != '2'"),
    )
    augment = _step(
        "augment",
        [
            "augment",
            "--recipe={{workflow.parameters.recipe}}",
            "--on-error={{workflow.parameters.on-error}}",
            "--max-failed={{workflow.parameters.max-failed}}",
            "--task-index={{inputs.parameters.task-index}}",
            "--shards-per-task={{inputs.parameters.shards-per-task}}",
            "--skip-existing",
            "--",
            "{{workflow.parameters.input}}",
            "{{workflow.parameters.output}}",
        ],
        inputs=[Parameter(name="task-index"), Parameter(name="shards-per-task")],
        pod_spec_patch=_resources_patch(),
        # A stuck read must not hold a parallelism slot forever; batches are sized to take
        # minutes to a few hours (README: scaling), and a retry resumes where it stopped.
        active_deadline_seconds="43200",
        retry_strategy=_retry("lastRetry.exitCode != '2'"),
    )
    verify = _step(
        "verify",
        [
            "verify",
            "--inputs={{workflow.parameters.input}}",
            "--max-failed={{workflow.parameters.max-failed}}",
            "--report={{inputs.parameters.report}}",
            "--sample-sheet={{inputs.parameters.sample-sheet}}",
            f"--summary-file={SUMMARY_FILE}",
            "--",
            "{{inputs.parameters.outputs}}",
        ],
        inputs=[
            Parameter(name="outputs"),
            Parameter(name="report"),
            Parameter(name="sample-sheet"),
        ],
        outputs=[
            Parameter(
                name="summary",
                global_name="verify-summary",
                value_from=ValueFrom(path=SUMMARY_FILE, default="verification did not finish"),
            )
        ],
        pod_spec_patch=_resources_patch(),
        # Failed verification (1) or a usage error (2) is a result, not an accident.
        retry_strategy=_retry("lastRetry.exitCode != '1' && lastRetry.exitCode != '2'"),
    )
    return plan, augment, verify


def _dag(plan: Container, augment: Container, verify: Container) -> None:
    planned = "{{tasks.plan.outputs.parameters.%s}}"
    with DAG(name=ENTRYPOINT, fail_fast=False):
        Task(name="plan", template=plan)
        Task(
            name="augment",
            template=augment,
            depends="plan.Succeeded",
            with_sequence=Sequence(count=planned % "tasks"),
            arguments={"task-index": "{{item}}", "shards-per-task": planned % "shards-per-task"},
        )
        Task(
            name="verify",
            template=verify,
            depends="plan.Succeeded && (augment.Succeeded || augment.Failed || augment.Errored)",
            arguments={name: planned % name for name in ("outputs", "report", "sample-sheet")},
        )


@dataclass(frozen=True)
class RenderSettings:
    """What a cluster may change when rendering: the default image and the pod parallelism."""

    image: str = DEFAULT_IMAGE
    parallelism: int = DEFAULT_PARALLELISM


def build(kind: type[Workflow], settings: RenderSettings) -> Workflow:
    """The Hera WorkflowTemplate (kind=WorkflowTemplate) or standalone Workflow (kind=Workflow)."""
    parameters = _parameters()
    for parameter in parameters:
        if parameter.name == "image":
            parameter.value = settings.image
    naming = {"name": NAME} if kind is WorkflowTemplate else {"generate_name": f"{NAME}-"}
    with kind(
        **naming,
        annotations={
            "workflows.argoproj.io/title": TITLE,
            "workflows.argoproj.io/description": DESCRIPTION,
        },
        labels={"app.kubernetes.io/name": "shardflow", "app.kubernetes.io/version": __version__},
        entrypoint=ENTRYPOINT,
        arguments=parameters,
        parallelism=settings.parallelism,
        active_deadline_seconds=3 * 24 * 3600,
        pod_gc=PodGC(strategy="OnPodSuccess"),
        ttl_strategy=TTLStrategy(
            seconds_after_success=24 * 3600, seconds_after_failure=7 * 24 * 3600
        ),
        security_context=_pod_security(),
    ) as workflow:
        templates = _templates()
        _dag(*templates)
    return workflow


# Template-level annotations (Argo >= 3.7) name each loop node in the UI; Hera 7.1's Container
# only sets pod annotations, so they are applied to the built model (render.py).
DISPLAY_NAMES = {"augment": "augment batch {{inputs.parameters.task-index}}"}
