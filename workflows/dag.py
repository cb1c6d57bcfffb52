"""The Argo DAG in Hera: plan -> augment x N -> verify x M (withSequence) -> report.

One definition gives both manifests in argo/: the WorkflowTemplate a team installs once and
submits from the Argo UI form, and the standalone Workflow for `argo submit`. It is also the
DAG that `shardflow run` executes on one machine, so every choice below is exercised by tests
without a cluster. The manifests need Argo Workflows >= 3.7 (template `annotations`,
`backoff.cap`); the 3.6 CLI refuses them and its API silently drops both fields.

Why the DAG looks like this:
- The manifest never grows with the dataset. A `plan` pod expands the input pattern, checks
  the parameters once (a typo fails one small pod, not a thousand), and outputs the task
  count; augment tasks fan out over `withSequence` indices and each expands the pattern itself
  to find its batch. 10 shards and 1,000,000 shards give the same manifest.
- Each task is a Container template running the `shardflow` CLI, so the UI shows a command
  line a person can copy and run. Values are bound as `--option=value` and positionals come
  after `--`, so no parameter value can turn into an option (parameters are untrusted).
- `--skip-existing` makes a retry or a resubmission redo only the shards without a manifest.
- verify runs after every augment task, also when some failed, because its `depends`
  expression accepts augment.Failed and augment.Errored (`failFast` plays no part: the DAG
  has one target task). It fans out too: each pod streams one batch of outputs (the plan
  sizes batches so that 100,000 shards stay under 2,000 nodes, plan.py) and leaves a part
  beside them; `report`, after every batch, merges the parts (never reading a shard) into
  the verify report, sample sheet, index, summary and dataset report, exactly as one pod
  verifying everything would (steps/verify_batch.py). The DAG's result is report's.
- Kubernetes cannot take CPU or memory quantities from a template variable, so resources come
  from a podSpecPatch. Argo does not enforce enums for `argo submit -p` or the API
  (argoproj/argo-workflows#6959), and a free string there could inject arbitrary pod spec, so
  the plan pod, which has no patch and which every other pod waits for, refuses any value
  outside its enum (parameters.py), and the patches read the values plan wrote. Argo cannot
  take `parallelism` from a parameter at all (argoproj/argo-workflows#1780): it is set when
  rendering or submitting.
- Retries follow the exit code (steps/errors.py): 1 (storage, network), 137 (OOM kill, retried
  with twice the memory) and Argo's -1 (no exit code: eviction, node loss) are retried; 2
  (usage) and 3 (damaged data) are not.
- Requests equal limits for the `main` container only; Argo's `init` and `wait` containers get
  the controller's executor resources, so pods are Guaranteed only when the controller config
  sets executor requests equal to limits (README: Running on Argo Workflows).
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
    WorkflowMetadata,
)

from shardflow.steps import __version__
from shardflow.steps.cli_common import STORAGE_OPTIONS_VARIABLE
from shardflow.steps.pairing import MAX_TASKS

from . import yamltext
from .parameters import DEFAULT_IMAGE, PARAMETERS, PATCHED, PLAN_CHECKED

NAME = "shardflow-augment"
ENTRYPOINT = "main"
DEFAULT_PARALLELISM = 32
USER_ID = 10001  # the image's non-root user (containers/Dockerfile)
TMP = "/tmp"
PLAN_DIR = f"{TMP}/plan"
VERIFY_TMP = "32Gi"  # a verify batch's spooled rows and hashes
SUMMARY_FILE = f"{TMP}/verify-summary.txt"
CREDENTIALS_SECRET = "shardflow-credentials"

PLAN_OUTPUTS = (
    "tasks",
    "shards-per-task",
    "outputs",
    "report",
    "sample-sheet",
    "verify-tasks",
    "verify-shards-per-task",
    "report-dir",
    "verify-parts",
    *PATCHED,
)
# What the verify batches and the last step are given, all from the plan pod's outputs.
VERIFY_INPUTS = ("outputs", "sample-sheet", "report-dir", "verify-parts")
REPORT_INPUTS = (*VERIFY_INPUTS, "report", "verify-shards-per-task")

TITLE = "shardflow: augment WebDataset shards"
DESCRIPTION = """\
Augments every shard of a WebDataset (tar shards on any object store) with a recipe, then
verifies the outputs.

1. **plan** expands `input`, checks the parameters and counts the tasks.
2. **augment** runs one pod per batch of shards; each output appears only when complete, with
   a manifest beside it, so a retry or a resubmission redoes only unfinished shards.
3. **verify** checks the output shards in batches, one pod per batch, each hashing every
   member for the per-sample table (`dataset-samples/`).
4. **report** merges the batches: `verify-report.json`, `verify-samples.png`, the dataset
   report (`dataset-report.json`, plots, duplicate images) and, when every shard passed, the
   dataset index (`PREFIX.shardindex.json`, `sizes.json`) beside the outputs; its summary is
   the output `verify-summary`.

Patterns use braces: `gs://bucket/train/train-{000000..000554}.tar`. Needs Argo Workflows
3.7 or newer."""


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
    """Requests = limits for `main`, from the values the plan pod wrote after checking them.

    Not from the workflow parameters themselves: Argo substitutes a template in two passes
    (common.SubstituteParams), so a parameter value holding `{{=...}}` is evaluated in the
    second, with each pod's own variables (pod.name, inputs, lastRetry); it could read "2" in
    the plan pod and something else in an augment pod. plan writes its checked values as
    plain output parameters, which hold no tags.
    """
    quantities = {"cpu": "{{inputs.parameters.cpu}}", "memory": memory}
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
    ' * asInt(sprig.trimSuffix("Gi", inputs.parameters.memory))}}Gi'
)
# Exit codes (steps/errors.py): 2 usage and 3 damaged data fail the same way every time; 1
# (storage, network), 137 (OOM kill) and Argo's "-1" (no exit code: eviction, node loss) may
# pass on another attempt.
RETRY_UNLESS_USAGE_OR_DATA = "lastRetry.exitCode != '2' && lastRetry.exitCode != '3'"
# report (verify --merge): a failed verification (1) or a usage error (2) is a result.
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


def _step(name: str, args: list[str], tmp_size: str = "1Gi", **options: Any) -> Container:
    """A Container template running `shardflow ARGS` with the settings every pod shares."""
    return Container(
        name=name,
        image="{{workflow.parameters.image}}",
        command=["shardflow"],
        args=args,
        env={STORAGE_OPTIONS_VARIABLE: "{{workflow.parameters.storage-options}}"},
        env_from=[SecretEnvFrom(name=CREDENTIALS_SECRET, optional=True)],
        security_context=_container_security(),
        service_account_name="{{workflow.parameters.service-account}}",
        volumes=[EmptyDirVolume(name="tmp", mount_path=TMP, size_limit=tmp_size)],  # type: ignore[arg-type]
        **options,
    )


def planning_step(
    name: str, args: list[str], directory: str, outputs: tuple[str, ...]
) -> Container:
    """The small first step of a fan-out (index_dag.py, reshard_dag.py): it writes the number
    of batches (and what else the tasks need) as files in `directory`, read back as outputs."""
    return _step(
        name,
        args,
        outputs=[
            Parameter(name=output, value_from=ValueFrom(path=f"{directory}/{output}"))
            for output in outputs
        ],
        resources=Resources(cpu_request="250m", memory_request="256Mi", memory_limit="1Gi"),
        active_deadline_seconds="600",
        retry_strategy=_retry(RETRY_UNLESS_USAGE_OR_DATA, PLAN_RETRIES, PLAN_BACKOFF),
    )


def verify_batch_args(head: list[str], tail: list[str]) -> list[str]:
    """`verify` of batch `task-index` (a pod of the verify fan-out), leaving its part in
    `verify-parts` and its per-sample table in `report-dir`; HEAD and TAIL name the shards
    (`--inputs=... -- OUTPUTS`, or the reshard's `--plan=WORK`)."""
    return [
        "verify",
        *head,
        "--task-index={{inputs.parameters.task-index}}",
        "--shards-per-task={{inputs.parameters.shards-per-task}}",
        "--parts={{inputs.parameters.verify-parts}}",
        "--sample-sheet={{inputs.parameters.sample-sheet}}",
        "--dataset-report={{inputs.parameters.report-dir}}",
        "--quiet",
        *tail,
    ]


def verify_merge_args(head: list[str], tail: list[str]) -> list[str]:
    """`verify --merge` of every batch's part (the last step): the report, sample sheet,
    dataset report, index and the summary file (verify_summary_output)."""
    return [
        "verify",
        "--merge",
        *head,
        "--max-failed={{workflow.parameters.max-failed}}",
        "--shards-per-task={{inputs.parameters.verify-shards-per-task}}",
        "--parts={{inputs.parameters.verify-parts}}",
        "--report={{inputs.parameters.report}}",
        "--sample-sheet={{inputs.parameters.sample-sheet}}",
        "--dataset-report={{inputs.parameters.report-dir}}",
        f"--summary-file={SUMMARY_FILE}",
        "--write-index",
        *tail,
    ]


def verify_summary_output() -> Parameter:
    """The merge's one-line summary, the workflow output `verify-summary`."""
    return Parameter(
        name="summary",
        global_name="verify-summary",
        value_from=ValueFrom(path=SUMMARY_FILE, default="verification did not finish"),
    )


def _templates() -> tuple[Container, Container, Container, Container]:
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
        inputs=[
            Parameter(name="task-index"),
            Parameter(name="shards-per-task"),
            *(Parameter(name=name) for name in PATCHED),
        ],
        pod_spec_patch=_resources_patch(MEMORY_AFTER_OOM),
        # A stuck read must not hold a parallelism slot forever; batches are sized to take
        # minutes to a few hours (README: scaling), and a retry resumes where it stopped.
        active_deadline_seconds="43200",
        retry_strategy=_retry(RETRY_UNLESS_USAGE_OR_DATA),
    )
    shards = (["--inputs={{workflow.parameters.input}}"], ["--", "{{inputs.parameters.outputs}}"])
    verify = _step(
        "verify",
        verify_batch_args(*shards),
        inputs=[
            Parameter(name="task-index"),
            Parameter(name="shards-per-task"),
            *(Parameter(name=name) for name in (*VERIFY_INPUTS, *PATCHED)),
        ],
        pod_spec_patch=_resources_patch("{{inputs.parameters.memory}}"),
        # The batch's per-sample rows and image hashes are spooled to local disk, not held in
        # memory: a few hundred bytes a sample (README: report).
        tmp_size=VERIFY_TMP,
        active_deadline_seconds="43200",
        # A batch exits 0 once its part is written, whatever it found: 1 is storage.
        retry_strategy=_retry(RETRY_UNLESS_USAGE_OR_DATA),
    )
    # Reads the batches' parts only (never a shard): small and fixed, whatever the dataset.
    report = _step(
        "report",
        verify_merge_args(*shards),
        inputs=[Parameter(name=name) for name in REPORT_INPUTS],
        outputs=[verify_summary_output()],
        resources=Resources(cpu_request="1", memory_request="1Gi", memory_limit="4Gi"),
        active_deadline_seconds="7200",
        retry_strategy=_retry(RETRY_VERIFY),
    )
    return plan, augment, verify, report


def _dag(plan: Container, augment: Container, verify: Container, report: Container) -> None:
    planned = "{{tasks.plan.outputs.parameters.%s}}"
    with DAG(name=ENTRYPOINT, fail_fast=False):
        Task(name="plan", template=plan)
        Task(
            name="augment",
            template=augment,
            depends="plan.Succeeded",
            with_sequence=Sequence(count=planned % "tasks"),
            arguments={
                "task-index": "{{item}}",
                "shards-per-task": planned % "shards-per-task",
                **{name: planned % name for name in PATCHED},
            },
        )
        Task(
            name="verify",
            template=verify,
            depends="plan.Succeeded && (augment.Succeeded || augment.Failed || augment.Errored)",
            with_sequence=Sequence(count=planned % "verify-tasks"),
            arguments={
                "task-index": "{{item}}",
                "shards-per-task": planned % "verify-shards-per-task",
                **{name: planned % name for name in (*VERIFY_INPUTS, *PATCHED)},
            },
        )
        # After every batch, also failed ones: the merge names a batch whose part is missing.
        Task(
            name="report",
            template=report,
            depends="verify.Succeeded || verify.Failed || verify.Errored",
            arguments={name: planned % name for name in REPORT_INPUTS},
        )


def template_options(
    name: str,
    title: str,
    description: str,
    parameters: list[Parameter],
    settings: RenderSettings,
    *,
    deadline_seconds: int,
) -> dict[str, Any]:
    """What every second WorkflowTemplate (index_dag.py, reshard_dag.py) shares with this one:
    title and description, labels, entrypoint, parallelism, deadline, pod GC and TTL, and the
    pods' security context."""
    return {
        "name": name,
        "annotations": {
            "workflows.argoproj.io/title": title,
            "workflows.argoproj.io/description": description,
        },
        "labels": {"app.kubernetes.io/name": "shardflow", "app.kubernetes.io/version": __version__},
        "entrypoint": ENTRYPOINT,
        "arguments": parameters,
        "parallelism": settings.parallelism,
        "active_deadline_seconds": deadline_seconds,
        "pod_gc": PodGC(strategy="OnPodSuccess"),
        "ttl_strategy": TTLStrategy(
            seconds_after_success=24 * 3600, seconds_after_failure=7 * 24 * 3600
        ),
        "security_context": _pod_security(),
    }


@dataclass(frozen=True)
class RenderSettings:
    """What a cluster may change when rendering: the default image and the pod parallelism."""

    image: str = DEFAULT_IMAGE
    parallelism: int = DEFAULT_PARALLELISM


def build(kind: type[Workflow], settings: RenderSettings) -> Workflow:
    """The Hera WorkflowTemplate (kind=WorkflowTemplate) or standalone Workflow (kind=Workflow)."""
    parameters = _parameters(settings.image)
    annotations = {
        "workflows.argoproj.io/title": TITLE,
        "workflows.argoproj.io/description": DESCRIPTION,
    }
    naming: dict[str, Any] = {"generate_name": f"{NAME}-"}
    if kind is WorkflowTemplate:
        # Workflows submitted from the template carry the title and description too.
        naming = {"name": NAME, "workflow_metadata": WorkflowMetadata(annotations=annotations)}
    with kind(
        **naming,
        annotations=annotations,
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
DISPLAY_NAMES = {
    "augment": "augment-{{inputs.parameters.task-index}}",
    "verify": "verify-{{inputs.parameters.task-index}}",
}
