"""Seeded recipe cases for the recipe fuzzer: structure, aliases, types, sizes and names.

A case is (seed, number) -> recipe text (YAML in a file, or inline JSON) plus the field names
a plugin will add to the sample, so any failure replays from its description. Bases are the
built-in recipes and a few that rename, call a plugin and pass members through; mutations
change their structure and values, put hostile names where member names come from, wrap
them in YAML aliases (bombs, recursion, merges), nest them deep, make them large, or damage
the text itself. Also the plugin that `map` steps of the cases call.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

import yaml

from shardflow.steps.recipe import BUILTIN_RECIPES

PLUGIN = "fuzz_recipes:add_fields"
# Names as a recipe or a plugin might give them: fine ones, and every kind a reader refuses
# or misreads (paths, controls, case, reserved fields, undecodable, enormous).
NAMES = [
    "png", "jpg", "json", "cls", "txt", "seg.png", "meta", "a", "é", "a b", "a.", ".a", "..",
    "x/../../../../tmp/pwned", "../x", "/abs", "C:x", "a\\b", "a\nb", "a\x00b", "a\rb", "\x7f",
    "PNG", "Jpg", "__key__", "__url__", "__local_path__", "__other__", "", " ", ".", "a" * 300,
    "\udcff", "a/b", "1", "-",
]  # fmt: skip
OPERATION_NAMES = [
    "image", "json", "convert", "resize", "center_crop", "random_crop", "hflip", "normalize",
    "label", "filter", "keep", "drop", "rename", "map", "encode", "blur",
]  # fmt: skip
EXTRA_BASES: list[dict[str, Any]] = [
    {
        "ops": [
            {"image": {"from": "jpg"}},
            {"rename": {"fields": {"json": "meta"}}},
            {"map": {"function": PLUGIN}},
            {"encode": {"members": {"png": "image"}, "passthrough": True}},
        ]
    },
    {
        "seed": 7,
        "ops": [
            {"json": {}},
            {"label": {"from": "json", "path": "cls", "to": "cls"}},
            {"keep": ["cls", "txt"]},
            {"encode": {"members": {"cls": "cls", "txt": {"from": "txt", "format": "raw"}}}},
        ],
    },
    {
        "ops": [
            {"image": {"from": "jpg;png", "mode": "L"}},
            {"resize": {"width": 16, "height": 12}},
            {"hflip": {"p": 1.0}},
            {"map": {"function": PLUGIN}},
            {
                "encode": {
                    "members": {"webp": {"from": "image", "quality": 50}},
                    "passthrough": True,
                }
            },
        ]
    },
]
BASES = [*BUILTIN_RECIPES.values(), *EXTRA_BASES]


@dataclass
class RecipeCase:
    seed: int
    number: int
    text: str
    inline: bool  # JSON given as the recipe argument; otherwise YAML in a file
    plugin_names: list[str]
    mutations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        head = self.text[:300] + ("..." if len(self.text) > 300 else "")
        return (
            f"recipe case {self.number} (--fuzz-seed {self.seed}): {'; '.join(self.mutations)}"
            f"\n  plugin names {self.plugin_names!r}\n  text {head!r}"
        )


def add_fields(sample: dict[str, Any]) -> dict[str, Any]:
    """The plugin of the cases: adds a bytes field under each name the sample's JSON lists,
    as a careless or hostile plugin would (passthrough then offers them as members)."""
    raw = sample.get("meta", sample.get("json"))
    document = json.loads(raw) if isinstance(raw, bytes) else raw
    names = document.get("names", []) if isinstance(document, dict) else []
    for name in names:
        sample[name] = b"added by a plugin"
    return sample


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["int", "float", "str", "bool", "none", "list", "dict", "name"])
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 224, 2**31 - 1, 2**31, 2**63, 10**30, -(10**30)])
    if kind == "float":
        return rng.choice([0.0, 0.5, 1.0, 1.5, -1.0, 1e308, float("inf"), float("nan")])
    if kind == "str":
        return rng.choice(["", "x", "jpg;png", "RGB", "bicubic", "json", "x" * 5000])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "name":
        return rng.choice(NAMES)
    if depth >= 3:
        return rng.choice(NAMES)
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(NAMES): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _containers(node: Any) -> list[Any]:
    """Every dict and list in a document."""
    found = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            found.append(current)
            stack += list(current.values())
        elif isinstance(current, list):
            found.append(current)
            stack += current
    return found


def _a_slot(document: Any, rng: random.Random) -> tuple[Any, Any] | None:
    """(container, key or index) of a random value in the document."""
    slots = [
        (c, k) for c in _containers(document) for k in (c if isinstance(c, dict) else range(len(c)))
    ]
    return rng.choice(slots) if slots else None


def set_value(document: Any, rng: random.Random) -> str:
    slot = _a_slot(document, rng)
    if slot is None:
        return "set: nothing to set"
    container, key = slot
    container[key] = random_value(rng)
    return f"set {key!r} to {container[key]!r}"[:120]


def delete(document: Any, rng: random.Random) -> str:
    slot = _a_slot(document, rng)
    if slot is None:
        return "delete: nothing to delete"
    container, key = slot
    del container[key]
    return f"delete {key!r}"[:120]


def add_key(document: Any, rng: random.Random) -> str:
    dicts = [c for c in _containers(document) if isinstance(c, dict)]
    if not dicts:
        return "add: no mapping"
    key = rng.choice([*NAMES, "op", "seed", "name", "description", "passthrough", "to", "from"])
    rng.choice(dicts)[key] = random_value(rng)
    return f"add key {key!r}"


def hostile_name(document: Any, rng: random.Random) -> str:
    """A name from NAMES where a member name comes from: an output extension, a rename
    target, an image or label target."""
    name = rng.choice(NAMES)
    ops = document.get("ops") if isinstance(document, dict) else None
    if not isinstance(ops, list):
        return "name: no ops"
    where = rng.choice(["encode", "rename", "image", "label"])
    if where == "encode":
        ops.append({"encode": {"members": {name: "image"}, "passthrough": rng.random() < 0.5}})
    elif where == "rename":
        ops.insert(0, {"rename": {"fields": {rng.choice(["jpg", "json", "txt"]): name}}})
    else:
        ops.insert(0, {where: {"to": name}})
    return f"{where} name {name!r}"


def shuffle_ops(document: Any, rng: random.Random) -> str:
    ops = document.get("ops") if isinstance(document, dict) else None
    if not isinstance(ops, list) or not ops:
        return "shuffle: no ops"
    if rng.random() < 0.5:
        rng.shuffle(ops)
        return "shuffle ops"
    ops.insert(rng.randrange(len(ops) + 1), copy.deepcopy(rng.choice(ops)))
    return "duplicate an op"


def new_operation(document: Any, rng: random.Random) -> str:
    ops = document.get("ops") if isinstance(document, dict) else None
    if not isinstance(ops, list):
        return "operation: no ops"
    name = rng.choice(OPERATION_NAMES)
    params = random_value(rng) if rng.random() < 0.5 else {}
    ops.insert(rng.randrange(len(ops) + 1), {name: params})
    return f"operation {name}"


DOCUMENT_MUTATIONS = [set_value, delete, add_key, hostile_name, hostile_name, shuffle_ops]
DOCUMENT_MUTATIONS += [new_operation]


def alias_text(rng: random.Random) -> tuple[str, str]:
    """YAML whose aliases nest: a bomb of random width and depth, a recursive alias, or a
    merge, placed where a recipe value goes."""
    kind = rng.choice(["bomb", "bomb", "recursive", "merge", "shared"])
    if kind == "recursive":
        return "ops: &x [{encode: {members: *x}}]\n", "recursive alias"
    if kind == "merge":
        return (
            "base: &b {members: {png: image}}\n"
            "ops: [{image: {}}, {encode: {<<: *b, passthrough: true}}]\n",
            "merge key",
        )
    if kind == "shared":  # small and legitimate: must load
        return (
            "ops:\n- image: &i {from: jpg}\n- encode: {members: {png: image}}\n",
            "shared anchor",
        )
    width, depth = rng.randint(2, 12), rng.randint(2, 12)
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, depth):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    place = rng.choice(["description", "seed", "name", "ops-param"])
    last = f"*l{depth - 1}"
    if place == "ops-param":
        lines.append(
            f"ops: [{{resize: {{shorter: {last}}}}}, {{encode: {{members: {{png: image}}}}}}]"
        )
    else:
        lines.append(f"{place}: {last}")
        lines.append("ops: [{image: {}}, {encode: {members: {png: image}}}]")
    return "\n".join(lines) + "\n", f"alias bomb {width}^{depth} in {place}"


def deep_text(rng: random.Random, inline: bool) -> tuple[str, str]:
    depth = rng.choice([10, 31, 32, 33, 100, 1000, 5000, 20000])
    opening, closing = rng.choice([("[", "]"), ('{"a":', "}")])
    nested = opening * depth + "1" + closing * depth
    text = f'{{"ops": [{{"encode": {{"members": {{"png": "image"}}}}}}], "description": {nested}}}'
    return text, f"nesting {depth} of {opening}"


def large_text(rng: random.Random) -> tuple[str, str]:
    size = rng.choice([1000, 200_000, 262_000, 262_144, 300_000])
    return (
        json.dumps({"description": "x" * size, "ops": [{"encode": {"members": {"png": "image"}}}]}),
        f"description of {size} characters",
    )


def damage_text(text: str, rng: random.Random) -> tuple[str, str]:
    """Insert, delete or replace characters, or repeat a line (a key given twice)."""
    how = rng.choice(["insert", "delete", "replace", "repeat"])
    if how == "repeat" and "\n" in text.strip():
        lines = text.splitlines()
        index = rng.randrange(len(lines))
        lines.insert(index, lines[index])
        return "\n".join(lines) + "\n", f"repeat line {index + 1}"
    position = rng.randrange(len(text) + 1)
    junk = rng.choice(["&a ", "*a", "*", "&", "<<: ", "!!python/object:os.system ", ":", "-", "\t"])
    junk = rng.choice([junk, rng.choice("{}[],:'\"#|>\\\x00\n"), chr(rng.randrange(1, 0x3000))])
    if how == "delete":
        return text[:position] + text[position + rng.randint(1, 5) :], f"delete at {position}"
    if how == "replace":
        return text[:position] + junk + text[position + 1 :], f"replace at {position}: {junk!r}"
    return text[:position] + junk + text[position:], f"insert at {position}: {junk!r}"


def recipe_case(seed: int, number: int) -> RecipeCase:
    """Case `number` of run `seed`."""
    rng = random.Random(f"recipe:{seed}:{number}")
    plugin_names = rng.sample(NAMES, rng.randint(0, 3))
    inline = rng.random() < 0.4
    mutations: list[str] = []
    kind = rng.choices(["document", "alias", "deep", "large"], weights=[80, 10, 6, 4])[0]
    if kind == "alias":
        text, described = alias_text(rng)
        inline = False
        mutations.append(described)
    elif kind == "deep":
        text, described = deep_text(rng, inline)
        mutations.append(described)
    elif kind == "large":
        text, described = large_text(rng)
        mutations.append(described)
    else:
        base = rng.randrange(len(BASES))
        document = copy.deepcopy(BASES[base])
        mutations.append(f"base {base}")
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            mutations.append(rng.choice(DOCUMENT_MUTATIONS)(document, rng))
        if inline:
            text = json.dumps(document)
        else:
            text = yaml.safe_dump(document, allow_unicode=rng.random() < 0.5)
    if rng.random() < 0.15:
        text, described = damage_text(text, rng)
        mutations.append(described)
    if inline and not text.lstrip().startswith(("{", "[")):
        inline = False
    return RecipeCase(seed, number, text, inline, plugin_names, mutations)
