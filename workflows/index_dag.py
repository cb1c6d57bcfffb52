"""The `shardflow-index` WorkflowTemplate in Hera: index anyone's shards as an Argo fan-out.

Indexing a large dataset on one machine takes days (Energon #165: 40 TB in 5,000 shards);
each shard's headers can be read independently, so the work fans out like augment does:

    plan ──> index-0 ┐
         ├─> index-1 ├──> merge   (the wids index and sizes.json)
         └─> ...     ┘

- **plan** expands the pattern and outputs the number of batches, where their parts go and,
  with `report=yes`, the dataset report's folder (the first shard's, as `shardflow report`;
  empty otherwise), so the manifest does not grow with the dataset (each task expands the
  pattern itself).
- **index** runs `shardflow index --task-index=I --parts=URL`: it reads its batch's headers
  (ranged reads, member data skipped), writes its DALI `.idx` files if asked, and publishes
  one part atomically. With a report folder it also streams the batch in full
  (report_cli.report_batch: every member hashed, image headers read), writes the batch's
  per-sample table there and a part in verify's format (verify_batch.py) in PARTS/report/.
  A retry redoes the batch; a damaged shard (exit 3) or a bad parameter (exit 2) is not
  retried.
- **merge** runs `shardflow index --merge`: it checks that every batch's part is there and
  describes the expected shards, then writes `PREFIX.shardindex.json` and `sizes.json`, and
  with a report folder the dataset report merged from the report parts (as `verify --merge`
  does, verify_batch.write_merged_report): what `shardflow report` writes on the same shards.

It shares the augment DAG's pod settings (`dag.py`: image, credentials Secret, security
context, retries with backoff; values bound as `--option=value`, positionals after `--`).
It is kept apart from `dag.py` so that each template has one job; `render_index()` gives the
manifest in argo/index-workflowtemplate.yaml.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Parameter, Resources, Task, WorkflowTemplate
from hera.workflows.models import Sequence

from . import dag, render

NAME = "shardflow-index"
FILE = "index-workflowtemplate.yaml"
PLAN_DIR = f"{dag.TMP}/index-plan"
BACKOFF = "30s"  # fixed: a retry-backoff parameter would need the plan pod's check
SHARED_PARAMETERS = ("retries", "image", "service-account", "storage-options")
# The plan's outputs: the number of batches, where their parts go, the dataset report's folder
# (empty: no report); every task after plan gets the last two.
PLAN_OUTPUTS = ("tasks", "parts", "report-dir")
TITLE = "shardflow: index WebDataset shards"
DESCRIPTION = """\
Writes the sample counts of a WebDataset for its readers: `PREFIX.shardindex.json` (wids),
`sizes.json` (open_clip) and, with `dali=yes`, a DALI `.idx` per shard.

1. **plan** expands `shards` and counts the batches.
2. **index** reads each batch's tar headers only (member data is skipped by ranged reads) and
   writes one part per batch; with `report=yes` it also streams the batch in full, writing
   its per-sample table and a report part.
3. **merge** checks that every batch is there and writes the index (and, with `report=yes`,
   `dataset-report.json`, its plots and duplicate images, beside the first shard).

Patterns use braces: `s3://bucket/train/train-{000000..000554}.tar`."""


def _parameters(image: str) -> list[Parameter]:
    shared = [p for p in dag._parameters(image) if p.name in SHARED_PARAMETERS]
    return [
        Parameter(
            name="shards",
            description="The shards to index: a URL brace pattern, e.g. "
            "s3://bucket/train/train-{000000..000554}.tar (gs://, s3://, https://).",
        ),
        Parameter(
            name="index",
            value="",
            description="Where to write the wids index; empty: PREFIX.shardindex.json beside "
            "the first shard, PREFIX being the shard names' common start.",
        ),
        Parameter(
            name="shards-per-task",
            value="10",
            enum=["1", "10", "100", "1000"],
            description="Shards per index pod (headers only: a pod reads a few MB per shard).",
        ),
        Parameter(
            name="dali",
            value="no",
            enum=["no", "yes"],
            description="Also write DALI's .idx beside each shard (wds2idx v1.2 format).",
        ),
        Parameter(
            name="report",
            value="no",
            enum=["no", "yes"],
            description="Also write the dataset report beside the first shard (each pod "
            "streams its shards in full): per-sample table, counts, plots, duplicate images, "
            "as `shardflow report` writes them.",
        ),
        *shared,
    ]


def _templates() -> tuple[Any, Any, Any]:
    small = Resources(cpu_request="250m", memory_request="256Mi", memory_limit="1Gi")
    common = [
        "index",
        "--index={{workflow.parameters.index}}",
        "--shards-per-task={{workflow.parameters.shards-per-task}}",
    ]
    plan = dag.planning_step(
        "index-plan",
        [
            *common,
            f"--write-plan={PLAN_DIR}",
            "--report={{workflow.parameters.report}}",
            "--",
            "{{workflow.parameters.shards}}",
        ],
        PLAN_DIR,
        PLAN_OUTPUTS,
    )
    report = "--dataset-report={{inputs.parameters.report-dir}}"
    batch = dag._step(
        "index",
        [
            *common,
            "--dali={{workflow.parameters.dali}}",
            "--task-index={{inputs.parameters.task-index}}",
            "--parts={{inputs.parameters.parts}}",
            report,
            "--quiet",
            "--",
            "{{workflow.parameters.shards}}",
        ],
        inputs=[Parameter(name="task-index"), *(Parameter(name=name) for name in PLAN_OUTPUTS[1:])],
        resources=Resources(cpu_request="1", memory_request="512Mi", memory_limit="2Gi"),
        tmp_size=dag.VERIFY_TMP,  # with a report: the batch's per-sample rows, spooled
        active_deadline_seconds="43200",
        retry_strategy=dag._retry(dag.RETRY_UNLESS_USAGE_OR_DATA, backoff=BACKOFF),
    )
    merge = dag._step(
        "index-merge",
        [
            *common,
            "--merge",
            "--parts={{inputs.parameters.parts}}",
            report,
            "--",
            "{{workflow.parameters.shards}}",
        ],
        inputs=[*(Parameter(name=name) for name in PLAN_OUTPUTS[1:])],
        resources=small,
        active_deadline_seconds="3600",
        retry_strategy=dag._retry(dag.RETRY_UNLESS_USAGE_OR_DATA, backoff=BACKOFF),
    )
    return plan, batch, merge


def build(settings: dag.RenderSettings | None = None) -> WorkflowTemplate:
    settings = settings or dag.RenderSettings()
    parameters = _parameters(settings.image)
    planned = "{{tasks.plan.outputs.parameters.%s}}"
    passed = {name: planned % name for name in PLAN_OUTPUTS[1:]}
    with WorkflowTemplate(
        **dag.template_options(
            NAME, TITLE, DESCRIPTION, parameters, settings, deadline_seconds=24 * 3600
        )
    ) as template:
        plan, batch, merge = _templates()
        with DAG(name=dag.ENTRYPOINT):
            Task(name="plan", template=plan)
            Task(
                name="index",
                template=batch,
                depends="plan.Succeeded",
                with_sequence=Sequence(count=planned % "tasks"),
                arguments={"task-index": "{{item}}", **passed},
            )
            Task(
                name="merge",
                template=merge,
                depends="index.Succeeded",
                arguments=passed,
            )
    return template


def manifest(settings: dag.RenderSettings | None = None) -> dict:
    """The WorkflowTemplate as the plain dict written to argo/."""
    names = {"index": "index-{{inputs.parameters.task-index}}"}
    return render.to_dict(render.with_display_names(build(settings).build(), names))


HEADER = (
    "# Rendered by `python -m shardflow.workflows.index_dag > argo/index-workflowtemplate.yaml`\n"
    "# from workflows/index_dag.py: do not edit by hand. A test keeps this file in sync with the\n"
    "# code and valid against Argo's schema.\n"
)


def render_index(settings: dag.RenderSettings | None = None) -> str:
    return HEADER + render.to_yaml(manifest(settings))


if __name__ == "__main__":  # pragma: no cover  (python -m shardflow.workflows.index_dag)
    print(render_index(), end="")
