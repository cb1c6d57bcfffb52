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

from . import yamltext
from .parameters import DEFAULT_IMAGE, PARAMETERS, PLAN_CHECKED
from .plan import MAX_TASKS

NAME = "shardflow-augment"
ENTRYPOINT = "main"
DEFAULT_PARALLELISM = 32
USER_ID = 10001  # the image's non-root user (containers/Dockerfile)
TMP = "/tmp"
PLAN_DIR = f"{TMP}/plan"
SUMMARY_FILE = f"{TMP}/verify-summary.txt"
CREDENTIALS_SECRET = "shardflow-credentials"

PLAN_OUTPUTS = ("tasks", "shards-per-task", "outputs", "report", "sample-sheet")

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


def _parameters(image: str) -> list[Parameter]:
    """The workflow's parameters (parameters.py): what the UI form shows, with drop-downs."""
    built = []
    for parameter in PARAMETERS:
        value = image if parameter.name == "image" else parameter.default
        options: dict[str, Any] = {"value": value} if value is not None else {}
        if parameter.enum:
            options["enum"] = list(parameter.enum)
        built.append(Parameter(name=parameter.name, description=parameter.description, **options))
    return built


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


def _resources_patch(memory: str) -> str:
    """Requests = limits for `main`, from values the plan pod has checked against their enums."""
    quantities = {"cpu": "{{workflow.parameters.cpu}}", "memory": memory}
    patch = {
        "containers": [
            {"name": "main", "resources": {"requests": quantities, "limits": quantities}}
        ]
    }
    return yamltext.dump(patch)


# After an OOM kill (exit 137) the next attempt gets twice the `memory` parameter. Argo
# substitutes `lastRetry.exitCode` into the template of each retry before the pod is created
# (operator.go executeTemplate; "0" on the first attempt), and the enum makes every value a
# whole number of Gi.
MEMORY_AFTER_OOM = (
    "{{=(asInt(lastRetry.exitCode) == 137 ? 2 : 1)"
    ' * asInt(sprig.trimSuffix("Gi", workflow.parameters.memory))}}Gi'
)
# Exit codes (steps/errors.py): 2 usage and 3 damaged data fail the same way every time; 1
# (storage, network), 137 (OOM kill) and Argo's "-1" (no exit code: eviction, node loss) may
# pass on another attempt.
RETRY_UNLESS_USAGE_OR_DATA = "lastRetry.exitCode != '2' && lastRetry.exitCode != '3'"
# verify: a failed verification (1) or a usage error (2) is a result, not an accident.
RETRY_VERIFY = "lastRetry.exitCode != '1' && lastRetry.exitCode != '2'"
# plan's own retries never depend on a parameter: when it refuses one, nothing else may fail
# first (the controller parses limit and backoff before it evaluates the expression).
PLAN_RETRIES = "3"
PLAN_BACKOFF = "10s"


def _retry(
    expression: str,
    limit: str = "{{workflow.parameters.retries}}",
    backoff: str = "{{workflow.parameters.retry-backoff}}",
) -> RetryStrategy:
    return RetryStrategy(
        limit=limit,
        retry_policy="Always",
        expression=expression,
        backoff=Backoff(duration=backoff, factor="2", cap="10m"),
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
            f"--max-tasks={MAX_TASKS}",
            f"--write-params={PLAN_DIR}",
            *(
                f"--check-parameter={name}={{{{workflow.parameters.{name}}}}}"
                for name in PLAN_CHECKED
            ),
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
        retry_strategy=_retry(RETRY_UNLESS_USAGE_OR_DATA, PLAN_RETRIES, PLAN_BACKOFF),
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
        pod_spec_patch=_resources_patch(MEMORY_AFTER_OOM),
        # A stuck read must not hold a parallelism slot forever; batches are sized to take
        # minutes to a few hours (README: scaling), and a retry resumes where it stopped.
        active_deadline_seconds="43200",
        retry_strategy=_retry(RETRY_UNLESS_USAGE_OR_DATA),
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
        pod_spec_patch=_resources_patch("{{workflow.parameters.memory}}"),
        retry_strategy=_retry(RETRY_VERIFY),
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
    parameters = _parameters(settings.image)
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
# only sets pod annotations, so they are applied to the built model (render.py). After
# substitution a display name must match Argo's `displayNameRegex` (no spaces, at most 63
# characters) or the controller errors the node and the fan-out stalls; lint.py checks it.
DISPLAY_NAMES = {"augment": "augment-{{inputs.parameters.task-index}}"}
