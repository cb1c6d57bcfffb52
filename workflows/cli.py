"""The `shardflow` command: step commands (augment, verify) and orchestration commands.

Each command module registers its own sub-parser; orchestration modules import Hera only
when their command runs, so a pod running `shardflow augment` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shardflow.steps import (
    __version__,
    augment_cli,
    check_cli,
    index_cli,
    recipe_cli,
    report_cli,
    reshard_cli,
    synth_cli,
    verify_cli,
)
from shardflow.steps.errors import EXIT_FAILED, ShardflowError
from shardflow.steps.redact import redact_text
from shardflow.steps.signals import Terminated, stop_signals_raise
from shardflow.workflows import plan_cli, render_cli, run_cli, submit_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardflow",
        description="Augment and filter WebDataset tar shards offline: locally, or on "
        "Kubernetes as an Argo Workflows DAG.",
    )
    parser.add_argument("--version", action="version", version=f"shardflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        run_cli,
        submit_cli,
        augment_cli,
        reshard_cli,
        verify_cli,
        index_cli,
        check_cli,
        report_cli,
        plan_cli,
        render_cli,
        recipe_cli,
        synth_cli,
    ):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_signals_raise():
            return args.func(args)
    except ShardflowError as exc:
        print(f"shardflow {args.command}: error: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # SIGTERM is how Kubernetes stops a pod (eviction, deletion): exit 1, the status of a
        # failure a retry may fix; Ctrl-C is a person stopping the program: the shell's 130.
        terminated = isinstance(exc, Terminated)
        cause = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"shardflow {args.command}: {cause}; {_left_behind(exc)}", file=sys.stderr)
        return EXIT_FAILED if terminated else 130


def _left_behind(exc: KeyboardInterrupt) -> str:
    """What the interruption left, as the command that cleaned up found it."""
    return getattr(exc, "left_behind", None) or "nothing partial was published"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
