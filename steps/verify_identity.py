"""verify --inputs: is each input still the version its output was made from?

An output made from an input that has since been replaced is complete and well-formed, and
still wrong: it no longer describes its input. The manifest records the identity of the
version read (see input_identity); the input is asked for its identity now and the two must
agree. Outputs whose manifest records no identity (made before it was recorded) are not
judged on it.
"""

from __future__ import annotations

from . import storage
from .input_identity import difference
from .storage_faults import describe
from .verify import Problem, ShardReport


def check_input_identity(report: ShardReport, options: storage.StorageOptions) -> None:
    """Add a `changed` problem to `report` when its paired input is no longer the version
    recorded (or cannot be asked); a no-op when there is nothing to compare."""
    if report.input is None or report.input_identity is None or report.manifest_input is None:
        return
    if storage.comparable_url(report.manifest_input) != storage.comparable_url(report.input):
        return  # made from another input: the pairing check reports that
    try:
        current = storage.current_identity(report.input, options)
    except FileNotFoundError:
        report.problems.append(Problem("changed", "changed: the input no longer exists"))
        return
    except Exception as exc:  # any back-end's error: a verdict for this shard, not a crash
        report.problems.append(
            Problem("changed", f"changed: cannot ask the input for its version: {describe(exc)}")
        )
        return
    moved = difference(report.input_identity, current)
    if moved is not None:
        report.problems.append(
            Problem(
                "changed",
                f"changed: the input is not the version this shard was made from ({moved})",
            )
        )
