"""The registry of recipe operations, and parsing one from a recipe.

The operations themselves live in ops_decode (image, json), ops_image (pixels), ops_fields
(labels, filters, fields, plugins) and ops_encode (the output members).
"""

from __future__ import annotations

from typing import Any

from .operation import Dropped, Operation, SampleContext
from .ops_decode import DecodeImage, DecodeJson
from .ops_encode import Encode
from .ops_fields import Drop, Filter, Keep, Label, Map, Rename
from .ops_image import CenterCrop, Convert, HorizontalFlip, Normalize, RandomCrop, Resize
from .params import Params, RecipeError, shown

__all__ = [  # what recipe.py and pipeline.py import from here
    "OPERATIONS",
    "Dropped",
    "Encode",
    "Label",
    "Operation",
    "SampleContext",
    "parse_operation",
]


OPERATIONS: dict[str, type[Operation]] = {
    op.name: op
    for op in (
        DecodeImage,
        DecodeJson,
        Convert,
        Resize,
        CenterCrop,
        RandomCrop,
        HorizontalFlip,
        Normalize,
        Label,
        Filter,
        Keep,
        Drop,
        Rename,
        Map,
        Encode,
    )
}


def parse_operation(index: int, raw: Any) -> Operation:
    """One operation from `{"op": name, ...}` or the short form `{name: {...}}`."""
    where = f"recipe op {index + 1}"
    if isinstance(raw, str):
        raw = {"op": raw}
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{where}: expected a mapping, got {shown(raw)}")
    if "op" in raw:
        params = {k: v for k, v in raw.items() if k != "op"}
        name = raw["op"]
    elif len(raw) == 1:
        ((name, params),) = raw.items()
        params = {} if params is None else params
    else:
        raise RecipeError(f"{where}: expected {{op: NAME, ...}} or {{NAME: {{...}}}}")
    op_class = OPERATIONS.get(name) if isinstance(name, str) else None
    if op_class is None:
        raise RecipeError(
            f"{where}: unknown operation {shown(name)} (known: {', '.join(sorted(OPERATIONS))})"
        )
    if not isinstance(params, dict):
        if name in ("keep", "drop") and isinstance(params, list | str):
            params = {"fields": params}
        else:
            raise RecipeError(
                f"{where} ({name}): parameters must be a mapping, got {shown(params)}"
            )
    return op_class.parse(Params(f"{where} ({name})", params, op_class.accepted))
