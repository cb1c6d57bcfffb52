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
    synth_cli,
    verify_cli,
)
from shardflow.steps.errors import ShardflowError
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
        verify_cli,
        index_cli,
        check_cli,
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
        return args.func(args)
    except ShardflowError as exc:
        print(f"shardflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shardflow: interrupted; nothing partial was published", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
