"""Recipe text, read and parsed within bounds before any of it is built or shown.

A recipe can come from a workflow parameter or a URL, so its text is untrusted: a YAML file of
a few hundred bytes whose aliases nest nine deep expands to a billion nodes when printed or
hashed, an endless HTTP response never ends, and a deep `[[[[...` exhausts the parser's stack.
So the text is read up to a size limit; YAML is composed into nodes (aliases still shared), then
measured as if expanded, depth and size, before a Python object is built; JSON is bounded by
its size and checked for depth. Duplicate keys are refused in both: the later one silently
winning would run a recipe other than the one read.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from .params import RecipeError

MAX_RECIPE_BYTES = 256 << 10  # a real recipe is a few hundred bytes
MAX_DEPTH = 32  # nesting of mappings and lists, aliases expanded
MAX_EXPANDED = 1 << 20  # nodes plus scalar characters, aliases expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


def check_size(data: bytes | str, where: str) -> None:
    """Refuse recipe text above MAX_RECIPE_BYTES (given at most one byte more than that)."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{where} is larger than {MAX_RECIPE_BYTES} bytes; a recipe is small")


def parse_json(text: str, where: str) -> Any:
    """Inline JSON: bounded in size and depth, no duplicate keys."""
    check_size(text, where)
    try:
        document = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise RecipeError(f"{where} nests deeper than {MAX_DEPTH} levels") from None
    _check_depth(document, 1, where)
    return document


def parse_yaml(text: str, where: str) -> Any:
    """YAML (or JSON): bounded in size, depth and expanded size before it is built."""
    check_size(text, where)
    try:
        loader = _BoundedLoader(text, where)  # refuses non-printable characters at once
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _Measure(where).expanded(node, 1)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())[:300]
        raise RecipeError(f"{where} is not valid YAML or JSON: {message}") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise RecipeError(f"recipe: duplicate key {key[:60]!r}")
        document[key] = value
    return document


def _check_depth(value: Any, depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise RecipeError(f"{where} nests deeper than {MAX_DEPTH} levels")
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        _check_depth(child, depth + 1, where)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_DEPTH (its composer recurses per level)."""

    def __init__(self, text: str, where: str) -> None:
        super().__init__(text)
        self._where = where
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RecipeError(f"{self._where} nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Measure:
    """Depth and size of a node graph as if every alias were copied out, in linear time:
    each shared node is measured once; an alias to an enclosing node is refused."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.heights: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def expanded(self, node: yaml.Node, depth: int) -> int:
        """The node's expanded size; raises RecipeError past the limits."""
        key = id(node)
        if key in self.sizes:
            if depth - 1 + self.heights[key] > MAX_DEPTH:
                raise RecipeError(f"{self.where} nests deeper than {MAX_DEPTH} levels")
            return self.sizes[key]
        if depth > MAX_DEPTH:
            raise RecipeError(f"{self.where} nests deeper than {MAX_DEPTH} levels")
        if key in self.open:
            raise RecipeError(f"{self.where}: an alias refers to a node that contains it")
        self.open.add(key)
        if isinstance(node, yaml.ScalarNode):
            size, height = 1 + len(node.value), 1
        else:
            children = self._children(node)
            size = 1 + sum(self.expanded(child, depth + 1) for child in children)
            height = 1 + max((self.heights[id(c)] for c in children), default=0)
        self.open.discard(key)
        if size > MAX_EXPANDED:
            raise RecipeError(
                f"{self.where} expands to more than {MAX_EXPANDED} nodes and characters "
                "(aliases copied out); a recipe is small"
            )
        self.sizes[key], self.heights[key] = size, height
        return size

    def _children(self, node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        seen: dict[tuple[str, str], int] = {}
        children = []
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                identity = (key_node.tag, key_node.value)
                if identity in seen:
                    line = key_node.start_mark.line + 1
                    raise RecipeError(
                        f"{self.where}: duplicate key {key_node.value[:60]!r} on line {line} "
                        f"(first on line {seen[identity]})"
                    )
                seen[identity] = key_node.start_mark.line + 1
            children += [key_node, value_node]
        return children
