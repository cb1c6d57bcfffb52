"""Pipeline knows no concrete operation: an operation declares its plugins (`plugins()`) and
what it fuses with (`plan(following)`). A new operation, registered and nothing else, gets
both; the built-in fusions are planned through the same hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from shardflow.steps.errors import UsageError
from shardflow.steps.ops import OPERATIONS, Operation
from shardflow.steps.params import Params
from shardflow.steps.pipeline import Pipeline
from shardflow.steps.plugins import Plugin
from shardflow.steps.recipe import parse_recipe

ENCODE = {"encode": {"members": {"png": "image"}}}


@dataclass
class Probe(Operation):
    """A new operation: calls a plugin and records the operations planned after it."""

    name: ClassVar[str] = "probe"
    accepted: ClassVar[tuple[str, ...]] = ("function",)
    function: Plugin
    seen_after: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, p: Params) -> Probe:
        return cls(Plugin.parse(p.str("function"), p.where))

    def params(self) -> dict[str, Any]:
        return {"function": self.function.reference}

    def plugins(self) -> tuple[Plugin, ...]:
        return (self.function,)

    def plan(self, following: Sequence[Operation]) -> None:
        self.seen_after = [op.name for op in following]


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(OPERATIONS, Probe.name, Probe)


def pipeline(*ops: Any, plugins: Sequence[str] = ()) -> Pipeline:
    recipe = parse_recipe({"ops": [*ops, ENCODE]})
    return Pipeline(recipe, max_pixels=10**8, allowed_plugins=plugins)


def test_a_registered_operation_is_planned_and_its_plugins_resolved(registered: None) -> None:
    probe = {"probe": {"function": "json:dumps"}}
    planned = pipeline({"image": {"from": "png"}}, probe, {"hflip": {"p": 1}}, plugins=["json"])
    op = planned.recipe.ops[1]
    assert isinstance(op, Probe)
    assert op.seen_after == ["hflip", "encode"]
    assert op.function._function is not None  # resolved before the first sample
    with pytest.raises(UsageError, match="not allowed"):
        pipeline(probe)


def test_an_image_step_plans_a_reduced_decode_for_the_resize_after_its_converts() -> None:
    image = {"image": {"from": "jpg"}}
    resize = {"resize": {"shorter": 64}}
    assert pipeline(image, {"convert": {"mode": "L"}}, resize).recipe.ops[0].draft is not None
    other_field = {"resize": {"shorter": 64, "field": "other"}}
    assert pipeline(image, other_field).recipe.ops[0].draft is None
    assert pipeline(image, {"hflip": {"p": 1}}, resize).recipe.ops[0].draft is None
