"""Recipes are untrusted: member names they make, YAML that expands, keys given twice and
integers too large are refused before any shard is read; member names a plugin invents fail
their sample; the tar writer refuses any unsafe name as a last defence."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from shardflow.steps.params import RecipeError
from shardflow.steps.recipe import load_recipe
from shardflow.steps.samples import written_name_reason
from shardflow.steps.tar_writer import TarWriter, UnsafeMemberName

from helpers import good_shard, run_cli, sample_members, write_tar

PASSTHROUGH_PNG = {"encode": {"members": {"png": "image"}, "passthrough": True}}
IMAGE = {"image": {"from": "jpg"}}


def inline(*ops: dict) -> str:
    return json.dumps({"ops": list(ops)})


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return good_shard(tmp_path / "in.tar", count=2)


def assert_usage_error(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            inline(
                IMAGE, {"rename": {"fields": {"json": "x/../../../../tmp/pwned"}}}, PASSTHROUGH_PNG
            ),
            "cannot rename to 'x/../../../../tmp/pwned'",
        ),
        (inline(IMAGE, {"rename": {"fields": {"json": "a\nb"}}}, PASSTHROUGH_PNG), "control"),
        (inline(IMAGE, {"rename": {"fields": {"json": "a\x00b"}}}, PASSTHROUGH_PNG), "control"),
        (inline(IMAGE, {"rename": {"fields": {"json": "a\\b"}}}, PASSTHROUGH_PNG), "/ or \\"),
        (inline(IMAGE, {"rename": {"fields": {"json": "JSON"}}}, PASSTHROUGH_PNG), "lower case"),
        (inline(IMAGE, {"rename": {"fields": {"json": "__key__"}}}, PASSTHROUGH_PNG), "reserved"),
        (inline(IMAGE, {"encode": {"members": {"PNG": "image"}}}), "lower case"),
        (inline(IMAGE, {"encode": {"members": {"a/b.png": "image"}}}), "/ or \\"),
        (inline(IMAGE, {"encode": {"members": {"..\\x.png": "image"}}}), "/ or \\"),
        (inline(IMAGE, {"encode": {"members": {"p\rng": "image"}}}), "control"),
        (inline({"label": {"to": "__key__"}}, PASSTHROUGH_PNG), "reserved"),
        (inline({"image": {"from": "jpg", "to": "__key__"}}, PASSTHROUGH_PNG), "reserved"),
    ],
)
def test_member_names_from_the_recipe_are_checked_before_any_shard(
    tmp_path: Path, shard: Path, recipe: str, message: str
) -> None:
    result = run_cli("augment", shard, tmp_path / "out" / "out.tar", "--recipe", recipe)
    assert_usage_error(result, message)
    assert not (tmp_path / "out").exists()


def test_member_names_a_plugin_invents_fail_their_sample_and_never_escape(
    tmp_path: Path, shard: Path
) -> None:
    """A map plugin adds fields named like paths; with passthrough they would be members."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "evil.py").write_text(
        "NAMES = ['x/../../../../escaped', 'a\\nb', 'UPPER', 'a\\\\b', '__url__']\n"
        "def add(sample):\n"
        "    if sample['__key__'].endswith('0'):\n"
        "        for name in NAMES:\n"
        "            sample[name] = b'pwned'\n"
        "    sample['fine.txt'] = b'kept'\n"
        "    return sample\n"
    )
    recipe = inline(IMAGE, {"map": {"function": "evil:add"}}, PASSTHROUGH_PNG)
    out = tmp_path / "out"
    result = run_cli(
        "augment", shard, out / "out.tar", "--recipe", recipe, "--plugins", "evil",
        "--json", "--max-failed", "1", env={"PYTHONPATH": str(plugins)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "out.manifest.json").read_text())
    assert manifest["counts"] == {"read": 2, "written": 1, "dropped": 0, "failed": 1}
    assert "cannot be written as a member" in manifest["failed"][0]["reason"]
    with tarfile.open(out / "out.tar") as tar:
        names = tar.getnames()
        assert all(written_name_reason(name) is None for name in names), names
        assert f"{manifest['samples'][0]['key']}.fine.txt" in names
        # as a reader trusting the shard would (no filter): nothing lands outside the target
        trusting = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tar.extractall(tmp_path / "a" / "b" / "c" / "extracted", **trusting)
    assert [p.name for p in tmp_path.rglob("escaped")] == []


UNSAFE_NAMES = ["k.x/../../../../tmp/pwned", "../k.png", "/k.png", "k.a\nb", "k.a\x00b"]
UNSAFE_NAMES += ["k.PNG", "k.a\\b", "k.__key__", "k", "\udcff.png"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_the_tar_writer_refuses_unsafe_member_names(tmp_path: Path, name: str) -> None:
    writer = TarWriter((tmp_path / "out.tar").open("wb"))
    with pytest.raises(UnsafeMemberName):
        writer.add(name, b"data")
    writer.add("dir/k.seg.png", b"data")  # a key with a directory and a two-part extension


def test_a_member_named_like_the_key_field_fails_the_shard(tmp_path: Path) -> None:
    """`x.__key__` would replace the key a plugin sees (webdataset refuses it as a duplicate)."""
    members = [*sample_members("0001"), ("0001.__key__", b"forged"), *sample_members("0002")]
    shard = write_tar(tmp_path / "in.tar", members)
    result = run_cli("augment", shard, tmp_path / "out.tar")
    assert result.returncode == 3, result.stderr  # the data's fault: a retry would not help
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "key '0001'" in errors[0] and "__key__ is a reserved field" in errors[0]
    assert not (tmp_path / "out.tar").exists()


# 389 bytes expanding to 9**9 strings when printed or hashed
BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *[
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefg", "bcdefgh", strict=True)
        ],
        "description: [*h, *h, *h, *h, *h, *h, *h, *h, *h]",
        "ops: [{encode: {members: {png: image}}}]",
    ]
)


@pytest.mark.parametrize(
    "command",
    [
        ["recipe", "{recipe}"],
        ["augment", "{shard}", "{out}", "--recipe", "{recipe}"],
        ["plan", "{shard}", "{out}", "--recipe", "{recipe}"],
        ["submit", "{shard}", "{out}", "--recipe", "{recipe}", "--dry-run"],
    ],
)
def test_a_yaml_alias_bomb_is_refused_by_every_command(
    tmp_path: Path, shard: Path, command: list[str]
) -> None:
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB)
    values = {"recipe": recipe, "shard": shard, "out": tmp_path / "out.tar"}
    result = run_cli(*[part.format(**values) for part in command], timeout=30)
    assert_usage_error(result, "expands to more than")
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ops: " + "[" * 5000 + "]" * 5000, "nests deeper than"),
        ("ops: &x [*x]", "refers to a node that contains it"),
        (
            "seed: 1\nseed: 2\nops: [{encode: {members: {png: image}}}]",
            "duplicate key 'seed' on line 2",
        ),
        ("ops:\n- encode:\n    members: {png: image, png: json}", "duplicate key 'png' on line 3"),
        ("description: " + "x" * 300_000, "larger than"),
        ("description: [1, 2]\nops: [{encode: {members: {png: image}}}]", "description must be"),
        # found by the recipe fuzzer: a NUL in the text; an encoder's source not a name
        ("description: 'a\x00b'\nops: [{encode: {members: {png: image}}}]", "not valid YAML"),
        ("ops: [{encode: {members: {txt: {from: [1], format: raw}}}}]", "from must be a field"),
        ('name: "a\\nb"\nops: [{encode: {members: {png: image}}}]', "name must be"),
        ("seed: 100000000000000000000\nops: [{encode: {members: {png: image}}}]", "seed must be"),
        ("ops: [{resize: {shorter: 99999999999}}, {encode: {members: {png: image}}}]", "at most"),
        ("ops: [{center_crop: {size: 99999999999}}, {encode: {members: {png: image}}}]", "at most"),
    ],
)
def test_recipe_files_are_bounded_and_unambiguous(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert_usage_error(run_cli("recipe", recipe, timeout=30), message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"seed": 1, "seed": 2, "ops": []}', "duplicate key 'seed'"),
        ('{"ops": ' + "[" * 2000 + "]" * 2000 + "}", "nests deeper than"),
    ],
)
def test_inline_recipes_are_bounded_and_unambiguous(text: str, message: str) -> None:
    assert_usage_error(run_cli("recipe", text, timeout=30), message)


def test_inline_recipes_have_a_size_limit() -> None:
    """Above the 128 kB a command-line argument may hold: checked in this process."""
    with pytest.raises(RecipeError, match="larger than"):
        load_recipe('{"ops": [], "description": "' + "x" * 300_000 + '"}')


def test_error_messages_quote_recipe_values_cut_short() -> None:
    recipe = inline(
        {"resize": {"shorter": "x" * 100_000}}, {"encode": {"members": {"png": "image"}}}
    )
    result = run_cli("recipe", recipe)
    assert_usage_error(result, "shorter must be an integer")
    assert len(result.stderr) < 300
