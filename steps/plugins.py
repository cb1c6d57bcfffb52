"""User functions named in a recipe as `package.module:function`.

A recipe can arrive as a workflow parameter, so naming a function must not be enough to run
it: a plugin is imported only when its module is allowed, with `--plugins MODULE[,MODULE]`
or `SHARDFLOW_PLUGINS`. An exception in a plugin fails that one sample, with the plugin's
name and the exception in the reason.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import SampleError, UsageError
from .params import shown

_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
ENVIRONMENT_VARIABLE = "SHARDFLOW_PLUGINS"


def allowed_modules(cli_value: str | None) -> list[str]:
    """Module prefixes from --plugins and SHARDFLOW_PLUGINS (comma-separated)."""
    values = [cli_value or "", os.environ.get(ENVIRONMENT_VARIABLE, "")]
    return [m.strip() for value in values for m in value.split(",") if m.strip()]


def _is_allowed(module: str, allowed: Iterable[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


@dataclass
class Plugin:
    reference: str
    _function: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, reference: str, where: str) -> Plugin:
        if not _REFERENCE.match(reference):
            raise UsageError(
                f"{where}: plugin {shown(reference)} is not of the form package.module:function"
            )
        return cls(reference)

    def resolve(self, allowed: Iterable[str]) -> None:
        """Import the function; a usage error if its module is not allowed or not importable."""
        module_name, _, function_name = self.reference.partition(":")
        if not _is_allowed(module_name, allowed):
            raise UsageError(
                f"plugin {self.reference!r} is not allowed: pass --plugins {module_name} "
                f"(or set {ENVIRONMENT_VARIABLE}) to run code from that module"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(
                f"plugin {self.reference!r}: cannot import {module_name}: {exc}"
            ) from None
        function = getattr(module, function_name, None)
        if not callable(function):
            raise UsageError(
                f"plugin {self.reference!r}: {module_name} has no function {function_name}"
            )
        self._function = function

    def call(self, sample: dict[str, Any], key: str) -> Any:
        if self._function is None:
            raise RuntimeError(f"plugin {self.reference} used before resolve()")
        try:
            return self._function(sample)
        except Exception as exc:
            raise SampleError(key, f"{self.reference} raised {type(exc).__name__}: {exc}") from None
