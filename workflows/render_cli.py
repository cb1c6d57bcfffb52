"""`shardflow render`: write the Argo manifests, or check that the ones on disk are current."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from shardflow.steps.cli_common import add_command, positive_int
from shardflow.steps.errors import EXIT_FAILED, EXIT_OK, ShardflowError

DESCRIPTION = """\
Render the Argo manifests from the Hera definitions (workflows/dag.py): the WorkflowTemplate
shardflow-augment (workflowtemplate.yaml), the standalone Workflow (workflow.yaml) and the
WorkflowTemplates shardflow-index (index-workflowtemplate.yaml, workflows/index_dag.py)
and shardflow-reshard (reshard-workflowtemplate.yaml, workflows/reshard_dag.py).
Without --write, compare them with the files in --out and show the difference; --out - prints
them. Every manifest is checked first: each {{...}} must resolve, each template and task named
must exist.

exit status: 0 written or up to date, 1 out of date or a check failed."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "render",
        DESCRIPTION,
        "render the Argo manifests (argo/*.yaml), or check they are current",
    )
    parser.add_argument(
        "--out", default="argo", metavar="DIR", help="directory of the manifests, or - (stdout)"
    )
    parser.add_argument("--write", action="store_true", help="write the files in --out")
    parser.add_argument("--image", help="default of the image parameter")
    parser.add_argument("--parallelism", type=positive_int, help="pods running at once")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hera.workflows import Workflow, WorkflowTemplate

    from . import dag, index_dag, lint, render, reshard_dag

    settings = dag.RenderSettings(
        image=args.image or dag.DEFAULT_IMAGE,
        parallelism=args.parallelism or dag.DEFAULT_PARALLELISM,
    )
    checked = {
        kind.__name__: render.manifest(kind, settings) for kind in (WorkflowTemplate, Workflow)
    }
    checked[index_dag.NAME] = index_dag.manifest(settings)
    checked[reshard_dag.NAME] = reshard_dag.manifest(settings)
    for name, document in checked.items():
        problems = lint.check_manifest(document)
        if problems:
            raise ShardflowError(f"{name} does not check: " + "; ".join(problems))
    texts = render.render_all(settings)
    if args.out == "-":
        sys.stdout.write("---\n".join(texts.values()))
        return EXIT_OK
    out = Path(args.out)
    if args.write:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")
        return EXIT_OK
    stale = [name for name, text in texts.items() if _read(out / name) != text]
    for name in stale:
        current = _read(out / name) or ""
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            texts[name].splitlines(keepends=True),
            fromfile=str(out / name),
            tofile=f"{out / name} (rendered)",
        )
        sys.stdout.writelines(diff)
    if stale:
        print(
            f"shardflow render: {', '.join(stale)} in {out} out of date: run "
            f"`shardflow render --out {out} --write`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"{', '.join(str(out / name) for name in texts)} up to date")
    return EXIT_OK


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
