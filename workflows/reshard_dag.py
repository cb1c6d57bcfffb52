"""The `shardflow-reshard` WorkflowTemplate in Hera: N shards in, M shards out, on Argo.

    batches ──> count-0 ┐          ┌─> write-0 ┐       ┌─> verify-0 ┐
            ├─> count-1 ├──> plan ─┼─> write-1 ├───────┼─> verify-1 ├──> report
            └─> ...     ┘          └─> ...     ┘       └─> ...      ┘
                 (verify runs also when some write batches failed)

- **batches** expands INPUTS and outputs the number of count batches and the work folder
  (`WORK`, `.reshard/` beside the outputs by default): the manifest never grows with the
  dataset. `inputs-per-task` and `shards-per-task` default to `auto` (steps/pairing.py:
  count and write share the augment DAG's 800 tasks, at most 180 and 620), so every size
  stays under 2,000 nodes; each pod computes its batch size from the same values (the
  inputs from INPUTS, the outputs from the plan), and a number making too many pods is
  refused (exit 2) by batches (count) or plan (write).
- **count** (`reshard --step count --task-index I`): each batch's inputs described from their
  manifests, or from their tar headers only (ranged reads), one inventory part per batch.
- **plan** (`reshard --step plan`): the key list applied, duplicates checked, the seeded
  shuffle drawn, outputs sized; the plan is written as files in WORK (one JSON line per
  output, and their offsets), never as a parameter: a plan of 10^6 outputs is a file a task
  reads one line of. It outputs the number of write batches, the number and size of the
  verify batches (the augment DAG's rule, steps/verify_files.py: at most 180) and where
  verify writes;
  too few OUTPUTS names stop it (exit 2) before anything is written.
- **write** (`reshard --step write --task-index I --skip-existing`): each output of the batch
  from its plan line, published atomically with its manifest; a retry redoes only missing
  outputs.
- **verify** (`verify --plan WORK --task-index I --dataset-report DIR`): each batch of outputs
  streamed against its manifests, every member hashed for the per-sample table; the batch's
  part goes to WORK/verify-parts. The outputs are named from plan.json, never plan.jsonl.
- **report** (`verify --merge --plan WORK --write-index`), after every verify batch, also
  failed ones: the parts merged into the verify report, sample sheet and dataset report
  beside the outputs, as the augment DAG's report step writes them; the lineage checked from
  the plan, the inventory and the manifests (never a shard); when all pass, the dataset index
  (wids JSON, sizes.json). Its summary is the workflow output `verify-summary`.

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
BACKOFF = "30s"
SHARED_PARAMETERS = (
    "on-error", "max-failed", "retries", "image", "service-account", "storage-options"
)  # fmt: skip
RECIPE_OPTIONS = ("on-error", "max-failed")  # the augment template's, passed to reshard too
# What plan writes beside the write batches: the verify batches (sized as the augment DAG's)
# and where verify writes (steps/verify_files.py).
VERIFY_FILES = ("sample-sheet", "report-dir", "verify-parts")
PLAN_OUTPUTS = ("tasks", "verify-tasks", "verify-shards-per-task", "report", *VERIFY_FILES)
VERIFY_INPUTS = ("work", *VERIFY_FILES)
REPORT_INPUTS = (*VERIFY_INPUTS, "report", "verify-shards-per-task")
TITLE = "shardflow: reshard WebDataset shards"
DESCRIPTION = """\
Writes the samples of `inputs` into new shards `outputs`: split, merged, filtered by a key
list, shuffled across all inputs; each output's manifest names, per sample, the input shard
and key it came from.

1. **count** reads each input's manifest, or its tar headers only.
2. **plan** decides which samples each output holds (a file beside the outputs).
3. **write** writes each output from its plan line, atomically.
4. **verify** checks the outputs in batches, one pod per batch, hashing every member.
5. **report** merges the batches: `verify-report.json`, `verify-samples.png`, the dataset
   report (`dataset-report.json`, plots, duplicate images) and, when every output passed and
   each kept input sample is in exactly one, the dataset index, beside the outputs; its
   summary is the output `verify-summary`.

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


def _templates() -> tuple[Any, Any, Any, Any, Any, Any]:
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
        outputs=[
            Parameter(name=name, value_from=ValueFrom(path=f"{PLAN_DIR}/{name}"))
            for name in PLAN_OUTPUTS
        ],
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
    work: tuple[list[str], list[str]] = (["--plan={{inputs.parameters.work}}"], [])
    verify = dag._step(
        "verify",
        dag.verify_batch_args(*work),
        inputs=[
            Parameter(name="task-index"),
            Parameter(name="shards-per-task"),
            *(Parameter(name=name) for name in VERIFY_INPUTS),
        ],
        resources=Resources(cpu_request="1", memory_request="2Gi", memory_limit="2Gi"),
        tmp_size=dag.VERIFY_TMP,  # the batch's per-sample rows and image hashes, spooled
        active_deadline_seconds="43200",
        # A batch exits 0 once its part is written, whatever it found: 1 is storage.
        retry_strategy=retry,
    )
    # Reads the parts, the plan, the inventory and the outputs' manifests, never a shard; the
    # lineage check holds 8 bytes a planned sample (reshard_lineage.py), as plan does.
    report = dag._step(
        "report",
        dag.verify_merge_args(*work),
        inputs=[Parameter(name=name) for name in REPORT_INPUTS],
        outputs=[dag.verify_summary_output()],
        resources=Resources(cpu_request="1", memory_request="4Gi", memory_limit="4Gi"),
        active_deadline_seconds="43200",
        retry_strategy=dag._retry(dag.RETRY_VERIFY, backoff=BACKOFF),
    )
    return batches, count, plan, write, verify, report


def build(settings: dag.RenderSettings | None = None) -> WorkflowTemplate:
    settings = settings or dag.RenderSettings()
    batched = "{{tasks.batches.outputs.parameters.%s}}"
    planned = "{{tasks.plan.outputs.parameters.%s}}"
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
        batches, count, plan, write, verify, report = _templates()
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
                with_sequence=Sequence(count=planned % "tasks"),
                arguments={"task-index": "{{item}}"},
            )
            Task(
                name="verify",
                template=verify,
                depends="plan.Succeeded && (write.Succeeded || write.Failed || write.Errored)",
                with_sequence=Sequence(count=planned % "verify-tasks"),
                arguments={
                    "task-index": "{{item}}",
                    "shards-per-task": planned % "verify-shards-per-task",
                    "work": batched % "work",
                    **{name: planned % name for name in VERIFY_INPUTS if name != "work"},
                },
            )
            # After every batch, also failed ones: the merge names a batch whose part is missing.
            Task(
                name="report",
                template=report,
                depends="verify.Succeeded || verify.Failed || verify.Errored",
                arguments={
                    "work": batched % "work",
                    **{name: planned % name for name in REPORT_INPUTS if name != "work"},
                },
            )
    return template


HEADER = (
    "# Rendered by `shardflow render --write` from workflows/reshard_dag.py: do not edit by\n"
    "# hand. A test keeps this file in sync with the code and valid against Argo's schema.\n"
)
DISPLAY_NAMES = {
    "count": "count-{{inputs.parameters.task-index}}",
    "write": "write-{{inputs.parameters.task-index}}",
    "verify": "verify-{{inputs.parameters.task-index}}",
}


def manifest(settings: dag.RenderSettings | None = None) -> dict:
    """The WorkflowTemplate as the plain dict written to argo/."""
    return render.to_dict(render.with_display_names(build(settings).build(), DISPLAY_NAMES))
