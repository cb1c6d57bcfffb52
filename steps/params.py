"""Strict reading of an operation's parameters, so that a typo in a recipe fails at once.

Recipes arrive as Argo parameters and files written by hand; a misspelt `shortr: 256`
silently ignored would cost a whole run. Every read is typed and every leftover key is an
error naming the operation and listing what it accepts.
"""

from __future__ import annotations

import builtins  # the methods int and str shadow the types in the class body
import reprlib
from typing import Any

from .errors import UsageError
from .samples import reserved_field_reason

# Pillow keeps sizes and offsets in C ints: a larger integer would pass here and then fail
# every sample.
MAX_INT = 2**31 - 1
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = 4
_SHOWN.maxlevel = 2


def shown(value: Any) -> str:
    """A recipe value for an error message, cut short: a value in a recipe can be any size."""
    return _SHOWN.repr(value)


class RecipeError(UsageError):
    """The recipe is malformed; the message names the operation and the parameter."""


class Params:
    """Typed, consumed-once access to one operation's parameters."""

    def __init__(self, where: str, raw: dict[str, Any], accepted: tuple[str, ...]) -> None:
        unknown = sorted(set(raw) - set(accepted))
        if unknown:
            expected = ", ".join(accepted) if accepted else "no parameters"
            raise RecipeError(
                f"{where}: unknown parameter {shown(unknown[0])} (expected: {expected})"
            )
        self.where = where
        # null means "default": canonical recipes spell out unset optional parameters as null
        self._raw = {k: v for k, v in raw.items() if v is not None}

    def has(self, name: str) -> bool:
        return name in self._raw

    def error(self, message: str) -> RecipeError:
        return RecipeError(f"{self.where}: {message}")

    def int(
        self,
        name: str,
        default: int | None = None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{name} must be an integer, got {shown(value)}")
        if minimum is not None and value < minimum:
            raise self.error(f"{name} must be at least {minimum}, got {shown(value)}")
        limit = MAX_INT if maximum is None else maximum
        if value > limit:
            raise self.error(f"{name} must be at most {limit}, got {shown(value)}")
        return value

    def optional_int(
        self, name: str, *, minimum: builtins.int | None = None, maximum: builtins.int | None = None
    ) -> builtins.int | None:
        return self.int(name, minimum=minimum, maximum=maximum) if name in self._raw else None

    def float(self, name: str, default: float, *, low: float, high: float) -> float:
        value = self._raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{name} must be a number, got {shown(value)}")
        if not low <= value <= high:
            raise self.error(f"{name} must be between {low} and {high}, got {shown(value)}")
        return float(value)

    def str(self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self._raw.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(f"{name} must be a non-empty string, got {shown(value)}")
        if choices and value not in choices:
            raise self.error(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
        return value

    def field(self, name: builtins.str, default: builtins.str) -> builtins.str:
        """The name of a field the operation sets: never one webdataset reserves."""
        value = self.str(name, default)
        reason = reserved_field_reason(value)
        if reason is not None:
            raise self.error(f"{name}: {reason}")
        return value

    def bool(self, name: builtins.str, default: bool) -> bool:
        value = self._raw.get(name, default)
        if not isinstance(value, bool):
            raise self.error(f"{name} must be true or false, got {shown(value)}")
        return value

    def str_list(
        self, name: builtins.str, default: list[builtins.str] | None = None
    ) -> list[builtins.str]:
        value = self._raw.get(name, default)
        if isinstance(value, str):
            value = [part for part in value.replace(";", ",").split(",") if part]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(f"{name} must be a list of names, got {shown(value)}")
        return value

    def mapping(self, name: builtins.str) -> dict[builtins.str, Any]:
        value = self._raw.get(name)
        if not isinstance(value, dict) or not value:
            raise self.error(f"{name} must be a non-empty mapping, got {shown(value)}")
        return value

    def raw(self, name: builtins.str, default: Any = None) -> Any:
        return self._raw.get(name, default)
