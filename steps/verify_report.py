"""What verify (and check) say about shards: the one-line summary, the table and the JSON
report. Rendering only: the checks are in verify.py, the command in verify_cli.py."""

from __future__ import annotations

import argparse
from typing import Any

from .redact import redact_url
from .verify import ShardReport

REPORT_FORMAT = "shardflow.verify/1"
SUMMARY_SHARDS = 3  # shards named by a failed summary line
TABLE_ROWS = 50  # above this many shards, the table lists only shards with problems


def summary_line(
    reports: list[ShardReport],
    seconds: float,
    failures: str | None = None,
    command: str = "verify",
) -> str:
    """One line for people and for an Argo output parameter: "verify: OK: ..." or FAILED.
    `failures` says why the run failed more samples than --max-failed allows."""
    total = len(reports)
    passed = sum(r.status == "ok" for r in reports)
    samples = sum(r.samples for r in reports)
    size = sum(r.bytes for r in reports)
    checked = f"{samples} samples, {_human(size)} checked in {seconds:.1f} s"
    if passed == total and failures is None:
        return f"{command}: OK: {total} of {total} shards passed; {checked}"
    if passed == total:
        return f"{command}: FAILED: {failures}; {total} of {total} shards passed; {checked}"
    by_status = [
        f"{count} {status}"
        for status in ("missing", "incomplete", "failed")
        if (count := sum(r.status == status for r in reports))
    ]
    return (
        f"{command}: FAILED: {total - passed} of {total} shards did not pass "
        f"({', '.join(by_status)}){f'; {failures}' if failures else ''}; {passed} passed; "
        f"{checked}; {_not_passing(reports)}"
    )


def _not_passing(reports: list[ShardReport]) -> str:
    """The first shards that did not pass, by URL: the summary is often all a person sees of a
    run (the Argo UI shows the output parameter), and it should say where to look."""
    urls = [r.output for r in reports if r.status != "ok"]
    more = f" and {len(urls) - SUMMARY_SHARDS} more" if len(urls) > SUMMARY_SHARDS else ""
    return f"not passing: {', '.join(urls[:SUMMARY_SHARDS])}{more}"


def format_table(reports: list[ShardReport], *, passing_rows_up_to: int | None = None) -> str:
    """shard, samples, members, bytes, status, first problem; then every problem of shards
    that have more than one. Above `passing_rows_up_to` shards, passing shards are counted,
    not listed: with 555 shards, the three that failed must not scroll out of sight."""
    header = ("shard", "samples", "members", "bytes", "status", "problem")
    listed = reports
    if passing_rows_up_to is not None and len(reports) > passing_rows_up_to:
        listed = [report for report in reports if report.problems]
    rows = []
    for report in listed:
        first = str(report.problems[0]) if report.problems else ""
        if len(report.problems) > 1:
            first += f" (+{len(report.problems) - 1} more, below)"
        rows.append(
            (
                redact_url(report.output),
                str(report.samples),
                str(report.members),
                _human(report.bytes),
                report.status,
                first,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    right = {1, 2, 3}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row[:-1])
        ]
        return "  ".join([*cells, row[-1]]).rstrip()

    lines = [line(header), *map(line, rows)]
    if len(listed) < len(reports):
        lines.append(
            f"({len(reports) - len(listed)} passing shards not listed; --all-rows lists them)"
        )
    for report in reports:
        if len(report.problems) > 1:
            lines.append(f"{redact_url(report.output)}:")
            lines += [f"  - {problem}" for problem in report.problems]
    return "\n".join(lines)


def report_document(
    args: argparse.Namespace,
    expect: list[str] | None,
    reports: list[ShardReport],
    summary: str,
    seconds: float,
) -> dict[str, Any]:
    """The JSON report (format shardflow.verify/1): the run, a summary, one entry per shard
    with its problems as {kind, message}."""
    statuses = ("ok", "failed", "incomplete", "missing")
    by_status = {s: sum(r.status == s for r in reports) for s in statuses}
    return {
        "format": REPORT_FORMAT,
        "outputs": redact_url(args.outputs) if args.outputs else None,
        "plan": redact_url(args.plan) if getattr(args, "plan", None) else None,
        "inputs": redact_url(args.inputs) if args.inputs else args.inputs,
        "expect": expect,
        "passed": all(r.status == "ok" for r in reports),
        "summary": {
            "line": summary,
            "shards": len(reports),
            "status": by_status,
            "samples": sum(r.samples for r in reports),
            "members": sum(r.members for r in reports),
            "bytes": sum(r.bytes for r in reports),
            "seconds": round(seconds, 3),
        },
        "shards": [r.to_dict() for r in reports],
    }


def _human(size: int) -> str:
    if size < 1_000_000:
        return f"{size / 1e3:.1f} kB"
    if size < 1_000_000_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e9:.2f} GB"
