"""When failed samples fail a shard or a whole run.

`--on-error skip` lets a bad sample cost one sample. It must not let a recipe that cannot
apply to the data (a `--label-field` no sample has, a plugin that always raises) cost every
sample while the run reports success. So a shard whose every sample failed is never
published, and a run whose failed samples exceed `--max-failed` of those read fails: augment
exits 3 (a data error, never retried) and verify reports FAILED. Dropped samples (filters)
are a recipe's intent and do not count.
"""

from __future__ import annotations

import argparse

DEFAULT_MAX_FAILED = 0.01
MAX_FAILED_HELP = (
    "fail the run when more than this fraction of the samples read failed, e.g. 0.05 or 5%; "
    "a shard whose every sample failed always fails"
)
ON_ERROR_CHOICES = ("skip", "fail")
DEFAULT_ON_ERROR = "skip"
ON_ERROR_HELP = (
    "a sample that cannot be decoded or processed: skip it (counted and listed by key in the "
    "shard's manifest) or fail its shard"
)


def every_sample_failed(counts: dict[str, int]) -> bool:
    return counts.get("read", 0) > 0 and counts.get("failed", 0) == counts["read"]


def too_many_failed(read: int, failed: int, max_failed: float) -> str | None:
    """The sentence saying why the run fails, or None when its failures are within bounds."""
    if read <= 0 or failed <= max_failed * read:
        return None
    return (
        f"{failed} of {read} samples failed ({failed / read:.1%}), more than --max-failed "
        f"{max_failed:g} allows (each shard's manifest lists its failed keys and why)"
    )


def fraction(text: str) -> float:
    """argparse type for --max-failed: a fraction from 0 to 1, or a percentage ("5%")."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        message = f"{text!r} is not a fraction (0.01) or a percentage (1%)"
        raise argparse.ArgumentTypeError(message) from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1 (0% and 100%)")
    return value


def add_max_failed_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--max-failed",
        type=fraction,
        default=DEFAULT_MAX_FAILED,
        metavar="FRACTION",
        help=f"{MAX_FAILED_HELP} (default: {DEFAULT_MAX_FAILED:g})".replace("%", "%%"),
    )
