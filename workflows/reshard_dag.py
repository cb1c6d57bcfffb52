"""The `shardflow-reshard` WorkflowTemplate in Hera: N shards in, M shards out, on Argo.

    batches ──> count-0 ┐
            ├─> count-1 ├──> plan ──> write-0 ┐
            └─> ...     ┘         ├─> write-1 ├──> verify
                                  └─> ...     ┘

- **batches** expands INPUTS and outputs the number of count batches and the work folder
  (`WORK`, `.reshard/` beside the outputs by default): the manifest never grows with the
  dataset.
- **count** (`reshard --step count --task-index I`): each batch's inputs described from their
  manifests, or from their tar headers only (ranged reads), one inventory part per batch.
- **plan** (`reshard --step plan`): the key list applied, duplicates checked, the seeded
  shuffle drawn, outputs sized; the plan is written as files in WORK (one JSON line per
  output, and their offsets), never as a parameter: a plan of 10^6 outputs is a file a task
  reads one line of. It outputs the number of write batches; too few OUTPUTS names stop it
  (exit 2) before anything is written.
- **write** (`reshard --step write --task-index I --skip-existing`): each output of the batch
  from its plan line, published atomically with its manifest; a retry redoes only missing
  outputs.
- **verify** (`verify --plan WORK --write-index`): every output against its manifest, and the
  lineage; when all pass, the dataset index beside the outputs (wids JSON, sizes.json).

Pods share the augment DAG's settings (dag.py: image, credentials Secret, security context,
retries by exit code; values bound as `--option=value`, positionals after `--`). Every step
gets the same reshard options, so each recomputes nothing it was not given.
`shardflow run --manifest argo/reshard-workflowtemplate.yaml -p inputs=... -p outputs=...`
runs it on one machine with the local executor.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Parameter, Resources, Task, WorkflowTemplate
from hera.workflows.models import Sequence, ValueFrom

from . import dag, render
from .parameters import RESHARD_PARAMETERS

NAME = "shardflow-reshard"
FILE = "reshard-workflowtemplate.yaml"
PLAN_DIR = f"{dag.TMP}/reshard-plan"
SUMMARY_FILE = f"{dag.TMP}/verify-summary.txt"
BACKOFF = "30s"
SHARED_PARAMETERS = (
    "on-error", "max-failed", "retries", "image", "service-account", "storage-options"
)  # fmt: skip
RECIPE_OPTIONS = ("on-error", "max-failed")  # the augment template's, passed to reshard too
TITLE = "shardflow: reshard WebDataset shards"
DESCRIPTION = """\
Writes the samples of `inputs` into new shards `outputs`: split, merged, filtered by a key
list, shuffled across all inputs; each output's manifest names, per sample, the input shard
and key it came from.

1. **count** reads each input's manifest, or its tar headers only.
2. **plan** decides which samples each output holds (a file beside the outputs).
3. **write** writes each output from its plan line, atomically.
4. **verify** checks every output and that each kept input sample is in exactly one.

`outputs` is a brace pattern with enough names or a printf pattern (`out/train-%06d.tar`)."""

# name, default, description (empty: the option is not given)
_OPTIONS = [p.name for p in RESHARD_PARAMETERS if p.name not in ("inputs", "outputs")]


def _parameters(image: str) -> list[Parameter]:
    own = []
    for row in RESHARD_PARAMETERS:
        options: dict[str, Any] = {} if row.default is None else {"value": row.default}
        if row.enum:
            options["enum"] = list(row.enum)
        own.append(Parameter(name=row.name, description=row.description, **options))
    shared = [p for p in dag._parameters(image) if p.name in SHARED_PARAMETERS]
    return [*own, *shared]


def _reshard(step: str, *extra: str) -> list[str]:
    """`shardflow reshard --step STEP` with every reshard option bound, then the patterns."""
    return [
        "reshard",
        f"--step={step}",
        *(f"--{name}={{{{workflow.parameters.{name}}}}}" for name in (*_OPTIONS, *RECIPE_OPTIONS)),
        *extra,
        "--",
        "{{workflow.parameters.inputs}}",
        "{{workflow.parameters.outputs}}",
    ]


def _templates() -> tuple[Any, Any, Any, Any, Any]:
    retry = dag._retry(dag.RETRY_UNLESS_USAGE_OR_DATA, backoff=BACKOFF)
    batches = dag.planning_step(
        "reshard-batches",
        _reshard("count", f"--write-plan={PLAN_DIR}"),
        PLAN_DIR,
        ("tasks", "work"),
    )
    count = dag._step(
        "count",
        _reshard("count", "--task-index={{inputs.parameters.task-index}}", "--quiet"),
        inputs=[Parameter(name="task-index")],
        resources=Resources(cpu_request="1", memory_request="1Gi", memory_limit="2Gi"),
        active_deadline_seconds="43200",
        retry_strategy=retry,
    )
    plan = dag._step(
        "plan",
        _reshard("plan", f"--write-plan={PLAN_DIR}"),
        outputs=[Parameter(name="tasks", value_from=ValueFrom(path=f"{PLAN_DIR}/tasks"))],
        # The plan holds 8 bytes a sample (24 with a shuffle); large datasets need more.
        resources=Resources(cpu_request="1", memory_request="4Gi", memory_limit="4Gi"),
        active_deadline_seconds="43200",
        retry_strategy=retry,
    )
    write = dag._step(
        "write",
        _reshard(
            "write", "--task-index={{inputs.parameters.task-index}}", "--skip-existing", "--quiet"
        ),
        inputs=[Parameter(name="task-index")],
        resources=Resources(cpu_request="2", memory_request="2Gi", memory_limit="2Gi"),
        active_deadline_seconds="43200",
        retry_strategy=retry,
    )
    verify = dag._step(
        "verify",
        [
            "verify",
            "--plan={{inputs.parameters.work}}",
            "--max-failed={{workflow.parameters.max-failed}}",
            "--write-index",
            f"--summary-file={SUMMARY_FILE}",
        ],
        inputs=[Parameter(name="work")],
        outputs=[
            Parameter(
                name="summary",
                global_name="verify-summary",
                value_from=ValueFrom(path=SUMMARY_FILE, default="verification did not finish"),
            )
        ],
        resources=Resources(cpu_request="1", memory_request="2Gi", memory_limit="2Gi"),
        retry_strategy=dag._retry(dag.RETRY_VERIFY, backoff=BACKOFF),
    )
    return batches, count, plan, write, verify


def build(settings: dag.RenderSettings | None = None) -> WorkflowTemplate:
    settings = settings or dag.RenderSettings()
    batched = "{{tasks.batches.outputs.parameters.%s}}"
    with WorkflowTemplate(
        **dag.template_options(
            NAME,
            TITLE,
            DESCRIPTION,
            _parameters(settings.image),
            settings,
            deadline_seconds=3 * 24 * 3600,
        )
    ) as template:
        batches, count, plan, write, verify = _templates()
        with DAG(name=dag.ENTRYPOINT, fail_fast=False):
            Task(name="batches", template=batches)
            Task(
                name="count",
                template=count,
                depends="batches.Succeeded",
                with_sequence=Sequence(count=batched % "tasks"),
                arguments={"task-index": "{{item}}"},
            )
            Task(name="plan", template=plan, depends="count.Succeeded")
            Task(
                name="write",
                template=write,
                depends="plan.Succeeded",
                with_sequence=Sequence(count="{{tasks.plan.outputs.parameters.tasks}}"),
                arguments={"task-index": "{{item}}"},
            )
            Task(
                name="verify",
                template=verify,
                depends="plan.Succeeded && (write.Succeeded || write.Failed || write.Errored)",
                arguments={"work": batched % "work"},
            )
    return template


HEADER = (
    "# Rendered by `shardflow render --write` from workflows/reshard_dag.py: do not edit by\n"
    "# hand. A test keeps this file in sync with the code and valid against Argo's schema.\n"
)
DISPLAY_NAMES = {
    "count": "count-{{inputs.parameters.task-index}}",
    "write": "write-{{inputs.parameters.task-index}}",
}


def manifest(settings: dag.RenderSettings | None = None) -> dict:
    """The WorkflowTemplate as the plain dict written to argo/."""
    return render.to_dict(render.with_display_names(build(settings).build(), DISPLAY_NAMES))
