"""How a run splits into tasks, computed from the patterns alone (no storage is touched).

The DAG's first pod computes this so that the Argo form needs only the input and output
patterns, and so that a bad parameter fails one small pod instead of every augment pod.
`shardflow submit` and `shardflow run` compute the same plan up front for the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from shardflow.steps.errors import UsageError
from shardflow.steps.pairing import AUTO, MAX_TASKS, Fanout, pair_shards, refuse_aliases, task_count
from shardflow.steps.pairing import check_urls as check_schemes
from shardflow.steps.redact import redact_url
from shardflow.steps.verify_files import VerifyFiles, verify_batch_size

# The UI and controller slow down past about 2,000 nodes. Every task of a fan-out is two Argo
# nodes (a retry node and its pod) and each fan-out adds a group node; with the DAG's own
# node, plan (2) and the last step (2), 800 augment and 180 verify tasks
# (pairing.MAX_TASKS, verify_files.MAX_VERIFY_TASKS) make at most 1,967. The reshard DAG's
# count and write fan-outs share those 800 (pairing.MAX_COUNT_TASKS, MAX_WRITE_TASKS):
# with its batches step and one more group node, at most 1,970.
MAX_NODES = 2000


@dataclass(frozen=True)
class TaskPlan:
    shards: int
    shards_per_task: int
    tasks: int
    outputs: str
    verify_tasks: int
    verify_shards_per_task: int
    files: VerifyFiles  # the verify report, sample sheet, dataset report and parts

    @property
    def report(self) -> str:
        return self.files.report

    @property
    def sample_sheet(self) -> str:
        return self.files.sample_sheet

    def parameters(self) -> dict[str, str]:
        """The plan pod's Argo output parameters, by name."""
        return {
            "tasks": str(self.tasks),
            "shards-per-task": str(self.shards_per_task),
            "outputs": self.outputs,
            "verify-tasks": str(self.verify_tasks),
            "verify-shards-per-task": str(self.verify_shards_per_task),
            **self.files.parameters(),
        }

    def describe(self) -> str:
        per = "shard" if self.shards_per_task == 1 else "shards"
        return (
            f"{self.shards} shard(s) in {self.tasks} augment task(s) of {self.shards_per_task} "
            f"{per} and {self.verify_tasks} verify task(s); outputs {redact_url(self.outputs)}; "
            f"verify report {redact_url(self.report)}"
        )


def plan_tasks(
    input_pattern: str,
    output_pattern: str,
    shards_per_task: str = AUTO,
    *,
    max_tasks: int = MAX_TASKS,
    check_urls: bool = True,
) -> TaskPlan:
    """Count shards and tasks; raise UsageError for anything that would fail every task.

    check_urls=False skips the URL scheme checks, for a client that submits to a cluster whose
    image has storage back-ends (gcsfs, s3fs) this machine may lack.
    """
    if max_tasks < 1:
        raise UsageError("--max-tasks must be positive")
    pairs = pair_shards(input_pattern, output_pattern)
    if check_urls:
        check_schemes(pairs)
    per_task = Fanout("shards-per-task", "shards", max_tasks).per_task(shards_per_task, len(pairs))
    files = VerifyFiles.beside([output for _, output in pairs])
    # verify writes these: they must not land on a shard either.
    refuse_aliases([url for pair in pairs for url in pair], files.writes())
    verify_per_task = verify_batch_size(len(pairs), per_task)
    return TaskPlan(
        shards=len(pairs),
        shards_per_task=per_task,
        tasks=task_count(len(pairs), per_task),
        outputs=_outputs_pattern(input_pattern, output_pattern),
        verify_tasks=task_count(len(pairs), verify_per_task),
        verify_shards_per_task=verify_per_task,
        files=files,
    )


def _outputs_pattern(input_pattern: str, output_pattern: str) -> str:
    """A pattern naming exactly the outputs, for verify (which takes no directory form)."""
    if not output_pattern.endswith("/"):
        return output_pattern
    if "://" in input_pattern:  # names come from the path, never a signed URL's query
        input_pattern = urlsplit(input_pattern)._replace(query="", fragment="").geturl()
    names = input_pattern[_last_separator(input_pattern) + 1 :]
    if "/" in names:
        raise UsageError(
            f"cannot name the outputs in {output_pattern!r} as one pattern (the input's "
            "braces span directories): give OUTPUT as a pattern of file names"
        )
    return output_pattern + names


def _last_separator(pattern: str) -> int:
    """Index of the last "/" outside braces (-1 if none)."""
    depth = 0
    last = -1
    for index, char in enumerate(pattern):
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        elif char == "/" and depth == 0:
            last = index
    return last
