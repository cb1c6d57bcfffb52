"""Recipes: an ordered list of operations, given as a built-in name, a file or inline JSON.

Inline JSON exists so that one Argo parameter can carry a whole recipe. The canonical form
(every parameter, defaults filled in, keys sorted) is what gets hashed: two spellings of the
same recipe have the same hash, and `--skip-existing` trusts a finished shard only when its
manifest carries the hash of the recipe being run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from . import recipe_text, storage, storage_faults
from .errors import ShardflowError
from .ops import Encode, Label, Operation, parse_operation
from .params import RecipeError, shown
from .redact import redact_text, redact_url

MAX_SEED = 2**63 - 1
MAX_DESCRIPTION = 1000
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,100}")  # printed in reports, one line

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
        "description": "Training-ready: shorter side 256 (exact area averaging, as "
        "img2dataset's INTER_AREA), center crop 224x224, JPEG quality 90, class from the JSON "
        "field cls.",
        "seed": 0,
        "ops": [
            {"image": {"from": "jpg;png;webp", "mode": "RGB"}},
            {"resize": {"shorter": 256, "resample": "area"}},
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
DEFAULT_RECIPE = "seed"
# The one description of a recipe spec (recipe_form), for every command and the Argo form.
RECIPE_HELP = (
    f"a built-in recipe ({', '.join(BUILTIN_RECIPES)}), a .yaml or .json file or URL, or "
    "inline JSON"
)


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


def load_recipe(
    spec: str,
    *,
    label_field: str | None = None,
    storage_options: storage.StorageOptions | None = None,
) -> Recipe:
    """A recipe from a built-in name, a .yaml/.yml/.json path or URL, or inline JSON.

    `storage_options` apply to a recipe URL as to shards: its headers, endpoint, tokens."""
    name, document = read_document(spec, storage_options or {})
    recipe = parse_recipe(document, default_name=name)
    if label_field is not None:
        labels = [op for op in recipe.ops if isinstance(op, Label)]
        if not labels:
            raise RecipeError(f"--label-field: recipe {shown(recipe.name)} has no label operation")
        for op in labels:
            op.path = label_field
    return recipe


class RecipeUnavailable(ShardflowError):
    """The recipe URL could not be read for a reason another try may mend (exit 1)."""


RecipeForm = Literal["builtin", "inline", "url", "file"]


def recipe_form(spec: str) -> RecipeForm:
    """Which form a recipe spec takes: a built-in name, inline JSON (`{...}` or `[...]`), a
    URL (`scheme://...`) or a local path. The one place this grammar is written."""
    text = spec.strip()
    if text in BUILTIN_RECIPES:
        return "builtin"
    if text.startswith(("{", "[")):
        return "inline"
    return "url" if "://" in text else "file"


def portable_recipe(spec: str) -> str:
    """The spec as a pod can read it: built-ins, inline JSON and URLs as given (a URL is read
    by the plan pod, with the pods' credentials); a local file as inline JSON, read within the
    same bounds as everywhere else. Raises RecipeError for a recipe that does not load."""
    text = spec.strip()
    form = recipe_form(text)
    if form == "url":
        return text
    if form != "file":
        load_recipe(text)
        return text
    stem, document = read_document(text, {})
    if isinstance(document, dict):
        document.setdefault("name", stem)  # the same recipe hash as a local run
    inline = json.dumps(document, separators=(",", ":"))
    load_recipe(inline)
    return inline


def read_document(spec: str, options: storage.StorageOptions) -> tuple[str, Any]:
    """(default name, parsed document) for a recipe spec, bounded as recipe_text explains."""
    text = spec.strip()
    form = recipe_form(text)
    if form == "builtin":
        return text, BUILTIN_RECIPES[text]
    if form == "inline":
        return "inline", recipe_text.parse_json(text, "inline recipe")
    if form == "url":
        storage.check_url(text, writing=False)  # an unknown scheme or a missing extra: exit 2
    path = urlsplit(text).path if form == "url" else text  # a signed URL ends with its query
    if path.endswith((".yaml", ".yml", ".json")):
        where = f"recipe file {shown(redact_url(text))}"
        data = _read_file(text, options, where)
        recipe_text.check_size(data, where)
        try:
            decoded = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{where} is not UTF-8: {exc}") from None
        return Path(path).stem, recipe_text.parse_yaml(decoded, where)
    known = ", ".join(sorted(BUILTIN_RECIPES))
    raise RecipeError(
        f"unknown recipe {shown(redact_url(spec))}: give a built-in name ({known}), a .yaml or "
        ".json file, or inline JSON"
    )


def _read_file(url: str, options: storage.StorageOptions, where: str) -> bytes:
    """The file's first MAX_RECIPE_BYTES + 1 bytes; a usage error when it is missing or
    refused, RecipeUnavailable when the network or the server failed."""
    try:
        return storage.read_head(url, options, recipe_text.MAX_RECIPE_BYTES + 1)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, FileNotFoundError) and exc.__cause__ else exc
        if not storage_faults.is_storage_error(cause):
            raise
        status = getattr(cause, "status", None)
        detail = redact_text(storage_faults.describe(cause))
        if status in (401, 403) or isinstance(cause, PermissionError):
            raise RecipeError(
                f"{where}: access refused ({detail}); give credentials or headers with "
                "--storage-option"
            ) from None
        if isinstance(cause, IsADirectoryError):
            raise RecipeError(f"{where} is a folder, not a file") from None
        if status == 404 or type(cause) is FileNotFoundError:
            raise RecipeError(f"{where} does not exist") from None
        if storage_faults.is_transient(cause):
            raise RecipeUnavailable(f"{where} cannot be read: {detail}") from None
        raise RecipeError(f"{where} cannot be read: {detail}") from None


def parse_recipe(document: Any, *, default_name: str = "recipe") -> Recipe:
    if isinstance(document, list):
        document = {"ops": document}
    if not isinstance(document, dict):
        raise RecipeError(f"a recipe is a mapping with ops, got {type(document).__name__}")
    unknown = sorted(map(str, set(document) - {"name", "seed", "ops", "description"}))
    if unknown:
        raise RecipeError(f"recipe: unknown key {shown(unknown[0])} (expected: name, seed, ops)")
    raw_ops = document.get("ops")
    if not isinstance(raw_ops, list) or not raw_ops:
        raise RecipeError("recipe: ops must be a non-empty list of operations")
    seed = document.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RecipeError(f"recipe: seed must be an integer in 0..{MAX_SEED}, got {shown(seed)}")
    name = document.get("name", default_name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RecipeError(
            f"recipe: name must be 1 to 100 printable characters on one line, got {shown(name)}"
        )
    description = document.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise RecipeError(
            f"recipe: description must be a string of at most {MAX_DESCRIPTION} characters"
        )
    ops = [parse_operation(i, raw) for i, raw in enumerate(raw_ops)]
    encoders = [i for i, op in enumerate(ops) if isinstance(op, Encode)]
    if encoders != [len(ops) - 1]:
        raise RecipeError("recipe: exactly one encode operation is needed, and it comes last")
    return Recipe(name, seed, ops, description)


def recipe_yaml(recipe: Recipe) -> str:
    """The canonical recipe as YAML: a starting point for writing one's own."""
    return yaml.safe_dump(recipe.canonical(), sort_keys=False)
