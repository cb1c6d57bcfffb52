"""Argo's `depends` expressions (enhanced depends logic), parsed without eval.

Grammar: operands `task` or `task.Result`, operators `!`, `&&`, `||`, and parentheses. A bare
`task` means `(task.Succeeded || task.Skipped || task.Daemoned)`, as in Argo. The local
executor uses this to decide, as the controller would, whether verify runs after failures.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from shardflow.steps.errors import UsageError

RESULTS = (
    "Succeeded",
    "Failed",
    "Errored",
    "Skipped",
    "Omitted",
    "Daemoned",
    "AnySucceeded",
    "AllFailed",
)
_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z]+)?)")


class DependsError(UsageError):
    pass


@dataclass
class TaskOutcome:
    """A finished DAG task: its phase, and its children's phases when it fanned out."""

    phase: str
    children: list[str] = field(default_factory=list)

    def has(self, result: str) -> bool:
        if result == "AnySucceeded":
            return "Succeeded" in self.children
        if result == "AllFailed":
            return bool(self.children) and all(p == "Failed" for p in self.children)
        return self.phase == result


def task_names(expression: str) -> set[str]:
    """The tasks an expression waits for."""
    return {token.split(".")[0] for token in _tokens(expression) if token[0].isalnum()}


def upstream(task: dict[str, Any]) -> set[str]:
    """The tasks a DAG task waits for, from `depends` or the older `dependencies` list."""
    if "depends" in task:
        return task_names(task["depends"])
    return set(task.get("dependencies", []))


def ancestors(name: str, upstream_of: dict[str, set[str]]) -> set[str]:
    """Every task that finishes before `name` starts (upstream_of: task -> its upstream)."""
    seen: set[str] = set()
    stack = list(upstream_of.get(name, ()))
    while stack:
        current = stack.pop()
        if current not in seen and current != name:
            seen.add(current)
            stack += upstream_of.get(current, ())
    return seen


def evaluate(expression: str, outcomes: dict[str, TaskOutcome]) -> bool:
    """True when the task that carries `expression` should run."""
    parser = _Parser(_tokens(expression), expression, lambda name: outcomes[name])
    return parser.parse()


def _tokens(expression: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise DependsError(f"depends {expression!r}: cannot parse at {text[position:]!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent: or := and ('||' and)*; and := not ('&&' not)*; not := '!' not | atom."""

    def __init__(
        self, tokens: list[str], expression: str, outcome: Callable[[str], TaskOutcome]
    ) -> None:
        self.tokens = tokens
        self.position = 0
        self.expression = expression
        self.outcome = outcome

    def parse(self) -> bool:
        value = self._or()
        if self.position != len(self.tokens):
            self._fail(f"unexpected {self.tokens[self.position]!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            self._fail("unexpected end")
        self.position += 1
        return token

    def _or(self) -> bool:
        value = self._and()
        while self._peek() == "||":
            self._take()
            right = self._and()
            value = value or right
        return value

    def _and(self) -> bool:
        value = self._not()
        while self._peek() == "&&":
            self._take()
            right = self._not()
            value = value and right
        return value

    def _not(self) -> bool:
        if self._peek() == "!":
            self._take()
            return not self._not()
        return self._atom()

    def _atom(self) -> bool:
        token = self._take()
        if token == "(":
            value = self._or()
            if self._take() != ")":
                self._fail("missing )")
            return value
        if not token[0].isalnum():
            self._fail(f"unexpected {token!r}")
        name, _, result = token.partition(".")
        outcome = self.outcome(name)
        if not result:
            return any(outcome.has(r) for r in ("Succeeded", "Skipped", "Daemoned"))
        if result not in RESULTS:
            self._fail(f"unknown task result {result!r} (one of {', '.join(RESULTS)})")
        return outcome.has(result)

    def _fail(self, message: str) -> NoReturn:
        raise DependsError(f"depends {self.expression!r}: {message}")
