"""How many URLs a brace pattern names, computed without expanding it.

`braceexpand` builds every alternative of every brace group in memory before yielding the
first URL (it feeds `itertools.product`): `{0..999999999}`, a typo or a hostile workflow
parameter, takes gigabytes and minutes before anything can be refused. Counting first costs
a pass over the pattern's text. The rules are braceexpand's own (ranges, comma sequences,
nesting, backslash escapes), so the count is exactly the length of its expansion.
"""

from __future__ import annotations

from collections.abc import Iterator

import braceexpand

# The most shards one pattern may name: far above real datasets (a few hundred thousand
# shards at most), low enough that the list of URLs and per-shard bookkeeping stay small.
MAX_SHARDS = 1_000_000


class PatternError(ValueError):
    """The pattern is malformed (unbalanced braces)."""


def count_expansions(pattern: str) -> int:
    """len(list(braceexpand(pattern))), in time linear in the pattern's length per level."""
    total = 1
    start = depth = 0
    for position, char in _unescaped(pattern):
        if char == "{":
            if depth == 0:
                start = position
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                expression = pattern[start + 1 : position]
                count = _expression_count(expression)
                total *= count if count is not None else count_expansions(expression)
    if depth != 0:
        raise PatternError(f"unbalanced braces: {pattern!r}")
    return total


def _expression_count(expression: str) -> int | None:
    """The count of a brace group's content, or None when it is neither a range nor a
    sequence (braceexpand then keeps the braces and expands the content)."""
    # braceexpand's own patterns (not in its __all__): the count follows its grammar exactly.
    match = braceexpand.int_range_re.match(expression)  # type: ignore[attr-defined]
    if match:
        first, last, step = match.groups()
        increment = (int(step) or 1) if step else 1
        low, high = int(first), int(last)
        if low < high:
            return len(range(low, high + 1, increment))
        return len(range(low, high - 1, -increment))
    match = braceexpand.char_range_re.match(expression)  # type: ignore[attr-defined]
    if match:
        first, last, step = match.groups()
        return len(braceexpand.make_char_range(first, last, step))  # type: ignore[attr-defined]
    return _sequence_count(expression)


def _sequence_count(sequence: str) -> int | None:
    parts = []
    start = depth = 0
    for position, char in _unescaped(sequence):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(sequence[start:position])
            start = position + 1
    if depth != 0 or not parts:
        return None
    parts.append(sequence[start:])
    return sum(count_expansions(part) for part in parts)


def _unescaped(text: str) -> Iterator[tuple[int, str]]:
    """(position, character) of each character not escaped by a backslash (nor a backslash)."""
    position = 0
    while position < len(text):
        if text[position] == "\\":
            position += 2
            continue
        yield position, text[position]
        position += 1
