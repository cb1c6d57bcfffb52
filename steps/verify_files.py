"""Where a workflow's verification writes, beside the outputs, and in how many batches.

Both DAGs that write shards end the same way (workflows/dag.py, workflows/reshard_dag.py):
verify fans out over batches of outputs, then one step merges the batches' parts into the
verify report, the sample sheet, the dataset report and the index. The augment DAG's plan
pod (workflows/plan.py) and the reshard DAG's plan step (reshard_cli.py) decide these
locations and the batch size here, so the two DAGs cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataset_report import DUPLICATES_NAME, PLOTS
from .dataset_report import REPORT_NAME as DATASET_REPORT_NAME
from .pairing import AUTO, Fanout, Write

REPORT_NAME = "verify-report.json"
SAMPLE_SHEET_NAME = "verify-samples.png"
PARTS_NAME = ".verify-parts"  # the verify batches' parts, removed by the last step
DATASET_FILES = (DATASET_REPORT_NAME, DUPLICATES_NAME, *PLOTS.values())
# At most this many verify batches: with the augment DAG's 800 tasks, 100,000 shards and more
# stay under 2,000 Argo nodes (workflows/plan.py counts them), and the merge reads every
# batch's hashes at once (spool_sort.FAN_IN).
MAX_VERIFY_TASKS = 180


def verify_batch_size(shards: int, per_task: int) -> int:
    """Shards per verify batch, for `shards` outputs written `per_task` to a pod.

    Never smaller than the writing step's batches: verifying a shard costs less than writing
    it, so a verify pod needs at least as many shards to be worth its start-up.
    """
    return Fanout("shards-per-task", "shards", MAX_VERIFY_TASKS, smallest=per_task).per_task(
        AUTO, shards
    )


def dataset_report_writes(directory: str) -> list[Write]:
    """The files of `verify --dataset-report DIR` (the per-sample table goes in a folder)."""
    base = directory.rstrip("/")
    return [Write(f"{base}/{name}", "the dataset report") for name in DATASET_FILES]


@dataclass(frozen=True)
class VerifyFiles:
    """The verify report, sample sheet, dataset report folder and parts folder of a run."""

    report: str
    sample_sheet: str
    report_dir: str  # the dataset report and per-sample table
    parts: str

    @classmethod
    def beside(cls, outputs: list[str], parts: str | None = None) -> VerifyFiles:
        """In the deepest folder holding every output; the parts in PARTS_NAME there unless
        `parts` is given."""
        directory = common_directory(outputs)
        report_dir = directory.rstrip("/") or "."
        return cls(
            report=directory + REPORT_NAME,
            sample_sheet=directory + SAMPLE_SHEET_NAME,
            report_dir=report_dir,
            parts=parts or f"{report_dir}/{PARTS_NAME}",
        )

    def writes(self) -> list[Write]:
        """What verify writes (for `pairing.refuse_aliases`: none may land on a shard)."""
        return [
            Write(self.report, "the verify report"),
            Write(self.sample_sheet, "the sample sheet"),
            *dataset_report_writes(self.report_dir),
        ]

    def parameters(self) -> dict[str, str]:
        """The plan step's Argo output parameters that name these files."""
        return {
            "report": self.report,
            "sample-sheet": self.sample_sheet,
            "report-dir": self.report_dir,
            "verify-parts": self.parts,
        }


def common_directory(urls: list[str]) -> str:
    """The deepest directory holding every URL, with its trailing slash ("" for the cwd).

    The common prefix of the smallest and largest URL is every URL's common prefix: two
    comparisons instead of a million when the pattern is large.
    """
    first, last = min(urls), max(urls)
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    head, slash, _ = first[:size].rpartition("/")
    return head + slash
