"""Argo's `{{...}}` template variables: find them, and substitute them as the controller does.

Both the manifest checks (lint.py) and the local executor use this, so a reference the checks
accept is one the executor can resolve, and the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from shardflow.steps.errors import UsageError

_REFERENCE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
# In an expression tag (`{{=...}}`): string literals, then the variables lint can check.
_STRING_LITERAL = re.compile(r"""'[^']*'|"[^"]*"|`[^`]*`""")
_EXPRESSION_VARIABLE = re.compile(
    r"\b(?:(?:workflow|inputs)\.parameters\.[A-Za-z0-9_-]+|lastRetry\.[A-Za-z]+|retries)\b"
)
# Set by the controller for each attempt of a template that has a retryStrategy.
RETRY_VARIABLES = (
    "retries",
    "lastRetry.exitCode",
    "lastRetry.status",
    "lastRetry.duration",
    "lastRetry.message",
)


class UnresolvedReference(UsageError):
    """A `{{...}}` that names nothing in scope: Argo fails the node the same way."""


def references(text: str) -> list[str]:
    """The variable names referenced in `text`, in order (`{{ item }}` -> "item")."""
    return _REFERENCE.findall(text)


def unsubstitutable(value: str) -> str | None:
    """The first character Argo cannot substitute into a template, or None.

    Argo inserts a value into the template's JSON through Go's strconv.Quote, whose escapes
    for most control characters (`\x01`, `\a`, `\v`) are not JSON: the node then fails
    with "invalid JSON". Tab, newline, carriage return, backspace and form feed are fine.
    """
    for char in value:
        if (ord(char) < 0x20 and char not in "\t\n\r\b\f") or char == "\x7f":
            return char
    return None


def expression_variables(reference: str) -> list[str]:
    """The variables an expression tag's text (`=...`) reads, string literals skipped."""
    return _EXPRESSION_VARIABLE.findall(_STRING_LITERAL.sub("", reference.removeprefix("=")))


def substitute(text: str, values: Mapping[str, str], where: str) -> str:
    """Replace every `{{name}}` in text by values[name]; no other evaluation happens."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise UnresolvedReference(f"{where}: cannot resolve {{{{{name}}}}}")
        return values[name]

    return _REFERENCE.sub(replace, text)


def substitute_all(value: Any, values: Mapping[str, str], where: str) -> Any:
    """substitute() applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return substitute(value, values, where)
    if isinstance(value, list):
        return [substitute_all(item, values, where) for item in value]
    if isinstance(value, dict):
        return {key: substitute_all(item, values, where) for key, item in value.items()}
    return value


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) for every string inside a JSON-like value, for error messages."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}" if path else key)


def parameter_values(parameters: list[dict[str, Any]] | None) -> dict[str, str]:
    """name -> value of Argo parameters that have a value (inputs or arguments)."""
    return {p["name"]: str(p["value"]) for p in parameters or [] if "value" in p}
