"""Recipes: an ordered list of operations, given as a built-in name, a file or inline JSON.

Inline JSON exists so that one Argo parameter can carry a whole recipe. The canonical form
(every parameter, defaults filled in, keys sorted) is what gets hashed: two spellings of the
same recipe have the same hash, and `--skip-existing` trusts a finished shard only when its
manifest carries the hash of the recipe being run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import storage
from .ops import Encode, Label, Operation, parse_operation
from .params import RecipeError

BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    "seed": {
        "description": "The webdataset docs recipe: image from jpg or png, per-image min-max "
        "normalisation, written as png; the class from the JSON field cls, written as cls.",
        "seed": 0,
        "ops": [
            {"image": {"from": "jpg;png", "mode": "RGB"}},
            {"normalize": {}},
            {"label": {"from": "json", "path": "cls"}},
            {"encode": {"members": {"png": "image", "cls": "cls"}}},
        ],
    },
    "train-224": {
        "description": "Training-ready: shorter side 256 (area averaging, as img2dataset's "
        "INTER_AREA), center crop 224x224, JPEG quality 90, class from the JSON field cls.",
        "seed": 0,
        "ops": [
            {"image": {"from": "jpg;png;webp", "mode": "RGB"}},
            {"resize": {"shorter": 256, "resample": "box"}},
            {"center_crop": {"size": 224}},
            {"label": {"from": "json", "path": "cls"}},
            {"encode": {"members": {"jpg": {"from": "image", "quality": 90}, "cls": "cls"}}},
        ],
    },
    "flip-crop": {
        "description": "Random augmentation: shorter side 256, random crop 224, horizontal flip "
        "with p=0.5 (per-sample seeds), JPEG quality 90, JSON kept as is.",
        "seed": 0,
        "ops": [
            {"image": {"from": "jpg;png;webp", "mode": "RGB"}},
            {"resize": {"shorter": 256, "resample": "box"}},
            {"random_crop": {"size": 224}},
            {"hflip": {"p": 0.5}},
            {"encode": {"members": {"jpg": "image"}, "passthrough": True}},
        ],
    },
}


@dataclass
class Recipe:
    name: str
    seed: int
    ops: list[Operation]
    description: str = ""

    @property
    def encoder(self) -> Encode:
        last = self.ops[-1]
        assert isinstance(last, Encode)
        return last

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "ops": [{"op": op.name, **op.params()} for op in self.ops],
        }

    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    def reads(self) -> set[str] | None:
        """The input members any operation may read; None means all of them."""
        wanted: set[str] = set()
        for op in self.ops:
            reads = op.reads()
            if reads is None:
                return None
            wanted |= {name.lower() for name in reads}
        return wanted


def load_recipe(spec: str, *, label_field: str | None = None) -> Recipe:
    """A recipe from a built-in name, a .yaml/.yml/.json path or URL, or inline JSON."""
    name, document = _read_document(spec)
    recipe = parse_recipe(document, default_name=name)
    if label_field is not None:
        labels = [op for op in recipe.ops if isinstance(op, Label)]
        if not labels:
            raise RecipeError(f"--label-field: recipe {recipe.name!r} has no label operation")
        for op in labels:
            op.path = label_field
    return recipe


def _read_document(spec: str) -> tuple[str, Any]:
    text = spec.strip()
    if text in BUILTIN_RECIPES:
        return text, BUILTIN_RECIPES[text]
    if text.startswith(("{", "[")):
        try:
            return "inline", json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"inline recipe is not valid JSON: {exc}") from None
    if text.endswith((".yaml", ".yml", ".json")):
        data = storage.read_bytes(text, {}) if "://" in text else _read_local(text)
        if data is None:
            raise RecipeError(f"recipe file {text!r} does not exist")
        try:
            return Path(text).stem, yaml.safe_load(data.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RecipeError(f"recipe file {text!r} is not valid YAML or JSON: {exc}") from None
    known = ", ".join(sorted(BUILTIN_RECIPES))
    raise RecipeError(
        f"unknown recipe {spec!r}: give a built-in name ({known}), a .yaml or .json file, "
        "or inline JSON"
    )


def _read_local(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise RecipeError(f"recipe file {path!r} is a folder, not a file") from None


def parse_recipe(document: Any, *, default_name: str = "recipe") -> Recipe:
    if isinstance(document, list):
        document = {"ops": document}
    if not isinstance(document, dict):
        raise RecipeError(f"a recipe is a mapping with ops, got {type(document).__name__}")
    unknown = sorted(set(document) - {"name", "seed", "ops", "description"})
    if unknown:
        raise RecipeError(f"recipe: unknown key {unknown[0]!r} (expected: name, seed, ops)")
    raw_ops = document.get("ops")
    if not isinstance(raw_ops, list) or not raw_ops:
        raise RecipeError("recipe: ops must be a non-empty list of operations")
    seed = document.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RecipeError(f"recipe: seed must be a non-negative integer, got {seed!r}")
    name = document.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise RecipeError(f"recipe: name must be a string, got {name!r}")
    ops = [parse_operation(i, raw) for i, raw in enumerate(raw_ops)]
    encoders = [i for i, op in enumerate(ops) if isinstance(op, Encode)]
    if encoders != [len(ops) - 1]:
        raise RecipeError("recipe: exactly one encode operation is needed, and it comes last")
    return Recipe(name, seed, ops, str(document.get("description", "")))


def recipe_yaml(recipe: Recipe) -> str:
    """The canonical recipe as YAML: a starting point for writing one's own."""
    return yaml.safe_dump(recipe.canonical(), sort_keys=False)
