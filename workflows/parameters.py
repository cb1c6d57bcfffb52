"""The DAG's parameters as plain data: names, defaults, allowed values and help.

One table, read by dag.py (which builds the Hera parameters of the Argo form), by `shardflow
run`/`submit` (their options) and by the plan pod (which refuses a value outside its allowed
set). It imports no Hera, so a pod that only checks values starts fast.

Why the plan pod checks what the form already restricts: Argo enforces `enum` only in its own
form and lint, not for `argo submit -p`, `--from` or the API (argoproj/argo-workflows#6959), and
cpu and memory are substituted into a podSpecPatch, where a free string could add any pod field.
plan is the DAG's first pod and carries no patch; every other pod waits for it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shardflow.steps import __version__
from shardflow.steps.errors import UsageError
from shardflow.steps.failures import (
    DEFAULT_MAX_FAILED,
    DEFAULT_ON_ERROR,
    MAX_FAILED_HELP,
    ON_ERROR_CHOICES,
    ON_ERROR_HELP,
    fraction,
)
from shardflow.steps.pairing import AUTO, MAX_TASKS, RESHARD_COUNT, RESHARD_WRITE
from shardflow.steps.recipe import DEFAULT_RECIPE, RECIPE_HELP

# Go durations Argo's backoff accepts, kept to whole seconds or minutes, at most a day: a
# typo fails the plan pod instead of the controller's retry bookkeeping.
_BACKOFF = re.compile(r"[1-9][0-9]{0,4}[sm]")
_BACKOFF_LIMIT_SECONDS = 24 * 3600
_SHOWN = 60  # characters of a refused value quoted in the error (values are untrusted)


@dataclass(frozen=True)
class DagParameter:
    """One workflow parameter. `default` None means required; `enum` () means free text."""

    name: str
    description: str
    default: str | None = None
    enum: tuple[str, ...] = ()
    checked_by_plan: bool = False  # the plan pod refuses bad values (it reaches a pod spec)


def _sentence(help_text: str) -> str:
    """A command's help phrase as a sentence for the Argo form."""
    return help_text[:1].upper() + help_text[1:] + "."


CPU_CHOICES = ("1", "2", "4", "8", "16")
MEMORY_CHOICES = ("1Gi", "2Gi", "4Gi", "8Gi", "16Gi", "32Gi")
RETRY_CHOICES = ("0", "1", "2", "3", "5", "10")
DEFAULT_BACKOFF = "30s"
DEFAULT_IMAGE = f"shardflow:{__version__}"

PARAMETERS: tuple[DagParameter, ...] = (
    DagParameter(
        "input",
        "Input shards: a URL brace pattern, e.g. "
        "gs://bucket/train/train-{000000..000554}.tar (gs://, s3://, https://).",
    ),
    DagParameter(
        "output",
        "Output shards: a pattern that expands to as many URLs as input, or a directory "
        "ending in / for shards of the same names.",
    ),
    DagParameter("recipe", _sentence(RECIPE_HELP), default=DEFAULT_RECIPE),
    DagParameter(
        "shards-per-task",
        f"Shards per augment pod, or {AUTO}: one per pod unless that makes more than "
        f"{MAX_TASKS} pods (a workflow stays responsive up to about 2,000 nodes).",
        default=AUTO,
    ),
    DagParameter(
        "on-error",
        _sentence(ON_ERROR_HELP),
        default=DEFAULT_ON_ERROR,
        enum=ON_ERROR_CHOICES,
        checked_by_plan=True,
    ),
    DagParameter(
        "max-failed",
        _sentence(MAX_FAILED_HELP),
        default=f"{DEFAULT_MAX_FAILED:g}",
        checked_by_plan=True,
    ),
    DagParameter(
        "cpu",
        "CPU cores per augment and verify pod (request = limit); augment runs one worker "
        "process per core.",
        default="2",
        enum=CPU_CHOICES,
        checked_by_plan=True,
    ),
    DagParameter(
        "memory",
        "Memory per augment and verify pod (request = limit). An augment pod killed for "
        "memory (exit 137) is retried with twice this much.",
        default="4Gi",
        enum=MEMORY_CHOICES,
        checked_by_plan=True,
    ),
    DagParameter(
        "retries",
        "Retries of an augment or verify pod that fails for a reason that can pass (eviction, "
        "node loss, OOM kill, a storage or network error); never for bad parameters (exit 2) "
        "or damaged data (exit 3).",
        default="3",
        enum=RETRY_CHOICES,
        checked_by_plan=True,
    ),
    DagParameter(
        "retry-backoff",
        "Wait before the first retry, e.g. 30s or 2m; it doubles with each retry, up to 10 "
        "minutes.",
        default=DEFAULT_BACKOFF,
        checked_by_plan=True,
    ),
    DagParameter(
        "image", "The shardflow container image (containers/Dockerfile).", default=DEFAULT_IMAGE
    ),
    DagParameter(
        "service-account",
        "Kubernetes service account of the pods: bind it to a cloud identity (GKE Workload "
        "Identity, EKS IRSA) to reach the buckets without keys.",
        default="default",
    ),
    DagParameter(
        "storage-options",
        'fsspec storage options as JSON, e.g. {"endpoint_url": "http://minio:9000"} for an '
        "S3-compatible store.",
        default="{}",
    ),
)

BY_NAME = {parameter.name: parameter for parameter in PARAMETERS}

# The reshard WorkflowTemplate's own parameters (workflows/reshard_dag.py); it shares the
# storage, image, retry and failure parameters above.
RESHARD_PARAMETERS: tuple[DagParameter, ...] = (
    DagParameter("inputs", "Input shards: a URL brace pattern, e.g. s3://bucket/in/in-{000..099}.tar."),
    DagParameter("outputs", "Output shards: a brace pattern with enough names, or printf "
                 "(s3://bucket/out/train-%06d.tar)."),
    DagParameter("samples-per-shard", "N samples per output (empty: not this sizing).", ""),
    DagParameter("shards", "M outputs of equal counts, within one (empty: not this sizing; with "
                 "no sizing at all, as many outputs as `outputs` names).", ""),
    DagParameter("max-shard-bytes", "Outputs of at most this size, e.g. 1GB (empty: not this "
                 "sizing).", ""),
    DagParameter("keep-keys", "URL of a key list (text, JSON, .npy, Parquet): keep only these "
                 "keys.", ""),
    DagParameter("drop-keys", "URL of a key list: keep every key but these.", ""),
    DagParameter("keys-column", "The key column of a Parquet key list (empty: key, __key__ or "
                 "uid).", ""),
    DagParameter("shuffle", "Seed of a uniform shuffle of all kept samples (empty: input order).",
                 ""),
    DagParameter("rename-duplicates", "yes: a key found twice becomes KEY_dupN the second time; "
                 "no: it is an error naming both shards.", "no", ("no", "yes")),
    DagParameter("recipe", "A recipe applied on the way (empty: members copied byte for byte).",
                 ""),
    DagParameter("inputs-per-task", f"Inputs counted per count pod, or "
                 f"{RESHARD_COUNT.auto_help()}.", AUTO),
    DagParameter("shards-per-task", f"Outputs written per write pod, or "
                 f"{RESHARD_WRITE.auto_help()}.", AUTO),
    DagParameter("work", "Folder of the inventory and the plan (empty: .reshard/ beside the "
                 "outputs).", ""),
)  # fmt: skip
PLAN_CHECKED = tuple(p.name for p in PARAMETERS if p.checked_by_plan)
# Values that reach a podSpecPatch: the plan pod writes them, once checked, as output
# parameters, and the patched pods read those (dag.py says why not the parameters themselves).
PATCHED = ("cpu", "memory")


def refusal(name: str, value: str, allowed: Iterable[str]) -> str:
    """The one-line error for a value outside its allowed set (newlines in it stay escaped)."""
    shown = repr(value) if len(value) <= _SHOWN else repr(value[:_SHOWN]) + "..."
    return f"parameter {name}={shown} is not one of {', '.join(allowed)}"


def check_value(name: str, value: str) -> None:
    """Raise UsageError (exit 2) unless `value` is allowed for the parameter `name`."""
    parameter = BY_NAME.get(name)
    if parameter is None:
        raise UsageError(f"unknown parameter {name!r} (known: {', '.join(BY_NAME)})")
    if parameter.enum and value not in parameter.enum:
        raise UsageError(refusal(name, value, parameter.enum))
    if name == "max-failed":
        try:
            fraction(value)
        except argparse.ArgumentTypeError:
            raise UsageError(
                refusal(name, value, ["a fraction from 0 to 1, e.g. 0.01 or 1%"])
            ) from None
    if name == "retry-backoff" and not _valid_backoff(value):
        raise UsageError(
            refusal(name, value, ["a whole number of seconds or minutes up to 1 day, e.g. 30s"])
        )


def check_values(values: Mapping[str, str]) -> dict[str, str]:
    """check_value() for each item, in the table's order (the first bad one is reported);
    returns the values that reach a pod spec (PATCHED), for the plan pod to pass on."""
    for name in sorted(values, key=lambda n: PARAMETERS.index(BY_NAME[n]) if n in BY_NAME else -1):
        check_value(name, values[name])
    return {name: values[name] for name in PATCHED if name in values}


def _valid_backoff(value: str) -> bool:
    if not _BACKOFF.fullmatch(value):  # fullmatch: `$` would let a trailing newline through
        return False
    seconds = int(value[:-1]) * (60 if value.endswith("m") else 1)
    return seconds <= _BACKOFF_LIMIT_SECONDS
