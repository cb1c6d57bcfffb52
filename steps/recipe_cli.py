"""`shardflow recipe [NAME]`: list the built-in recipes, or print one as editable YAML."""

from __future__ import annotations

import argparse

from .recipe import BUILTIN_RECIPES, load_recipe, recipe_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipe",
        help="list built-in recipes or print one as YAML",
        description="Without an argument, list the built-in recipes. With one (a built-in name, "
        "a file or inline JSON), print its canonical form (every default filled in) and its "
        "hash: a starting point for a recipe of your own.",
    )
    parser.add_argument("recipe", nargs="?", help="built-in name, .yaml/.json file or inline JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.recipe is None:
        width = max(len(name) for name in BUILTIN_RECIPES)
        for name, document in BUILTIN_RECIPES.items():
            print(f"{name:<{width}}  {document['description']}")
        return 0
    recipe = load_recipe(args.recipe)
    print(f"# recipe hash: {recipe.hash()}")
    for line in recipe.description.splitlines():  # each line a comment: the YAML stays the recipe
        print(f"# {line}")
    print(recipe_yaml(recipe), end="")
    return 0
