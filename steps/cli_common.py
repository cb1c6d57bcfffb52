"""Command-line pieces shared by the step commands (augment, verify)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .cpus import IO_THREADS_HELP
from .errors import UsageError
from .pairing import AUTO, per_task_value
from .storage import StorageOptions

STORAGE_OPTIONS_VARIABLE = "SHARDFLOW_STORAGE_OPTIONS"
SECRET_OPTIONS_VARIABLE = "SHARDFLOW_STORAGE_OPTIONS_SECRET"


def add_command(
    subparsers: argparse._SubParsersAction, name: str, description: str, summary: str
) -> argparse.ArgumentParser:
    """A sub-command of `shardflow`: `summary` in the list of commands, `description` (with
    its line breaks: exit statuses, examples) in its --help."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("storage")
    group.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec storage option, e.g. endpoint_url=http://minio:9000 or anon=true "
        "(VALUE is read as JSON when it parses, else as a string; repeatable)",
    )
    group.add_argument(
        "--storage-options",
        metavar="JSON",
        help=f"all storage options as one JSON object (also ${STORAGE_OPTIONS_VARIABLE} and, "
        f"for secrets, ${SECRET_OPTIONS_VARIABLE})",
    )


def storage_options(args: argparse.Namespace) -> StorageOptions:
    """Options from $SHARDFLOW_STORAGE_OPTIONS, $SHARDFLOW_STORAGE_OPTIONS_SECRET,
    --storage-options, then --storage-option; later sources win, key by key.

    Two variables because in a pod the first is set from a workflow parameter (visible in the
    UI) while the second comes from a Kubernetes Secret, for tokens such as HTTP headers.
    """
    options: dict[str, Any] = {}
    for source, text in (
        (f"${STORAGE_OPTIONS_VARIABLE}", os.environ.get(STORAGE_OPTIONS_VARIABLE)),
        (f"${SECRET_OPTIONS_VARIABLE}", os.environ.get(SECRET_OPTIONS_VARIABLE)),
        ("--storage-options", args.storage_options),
    ):
        if text:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{source} is not valid JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise UsageError(f"{source} must be a JSON object")
            _merge(options, value)
    for item in args.storage_option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option {item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _merge(options: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge `update` into `options`; per-scheme mappings ({"s3": {...}}) merge one level deep,
    so a secret's {"https": {"headers": ...}} keeps the parameter's other https options."""
    for key, value in update.items():
        current = options.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            options[key] = {**current, **value}
        else:
            options[key] = value


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    group.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout, for scripts"
    )


def add_batch_arguments(group: argparse._ArgumentGroup, *, what: str) -> None:
    """--task-index and --shards-per-task: one task of an Argo fan-out takes batch I of the
    shards (pairing.Batch); `what` says what a task does with its batch."""
    group.add_argument(
        "--task-index", type=non_negative_int, metavar="I", help=f"{what} batch I only (0-based)"
    )
    group.add_argument(
        "--shards-per-task",
        type=positive_int,
        default=1,
        metavar="N",
        help="shards per batch, with --task-index (default: 1)",
    )


def add_io_threads_argument(parser: argparse.ArgumentParser, *, doing: str) -> None:
    """--threads of the commands that read shards without decoding them (verify, check,
    index, report): `doing` says what a thread does, e.g. "shards checked at once"."""
    parser.add_argument("--threads", type=positive_int, help=f"{doing} {IO_THREADS_HELP}")


def show_bar(args: argparse.Namespace) -> bool:
    """A progress bar only for a person at a terminal."""
    return not (args.quiet or args.json) and sys.stderr.isatty()


def auto_or_positive_int(text: str) -> str | int:
    """argparse type of a batch size: `auto` or a positive integer (pairing.Fanout)."""
    try:
        return per_task_value(text)
    except UsageError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a positive integer nor {AUTO!r}"
        ) from None


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)
