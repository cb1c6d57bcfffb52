"""Usage errors exit 2 with one clear line, before any work is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import good_shard, run_cli


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return good_shard(tmp_path / "in.tar", count=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "sead"], "unknown recipe 'sead'"),
        (["--recipe", '{"ops": [{"resize": {"shortr": 5}}]}'], "unknown parameter 'shortr'"),
        (["--recipe", '{"ops": [{"image": {}}]}'], "exactly one encode operation"),
        (["--recipe", '{"ops": [{"blur": {}}]}'], "unknown operation 'blur'"),
        (["--recipe", '{"ops": ['], "not valid JSON"),
        (["--recipe", "missing.yaml"], "does not exist"),
        (["--recipe", '{"ops": [{"encode": {"members": {"a": "b"}}}]}'], "cannot infer a format"),
        (
            ["--recipe", '{"ops": [{"map": {"function": "os:system"}}, {"encode": {}}]}'],
            "members must be a non-empty mapping",
        ),
        (["--label-field", "x", "--recipe", "flip-crop"], "has no label operation"),
        (["--max-mpx", "0"], "--max-mpx must be a positive number, got 0.0"),
    ],
)
def test_bad_recipes_and_options(
    tmp_path: Path, shard: Path, args: list[str], message: str
) -> None:
    result = run_cli("augment", shard, tmp_path / "out.tar", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("foo://bucket/in.tar", "{tmp}/out.tar", "unknown URL scheme 'foo'"),
        ("pipe:cat {shard}", "{tmp}/out.tar", "refused unless --allow-pipe"),
        ("{shard}", "https://example.com/out.tar", "read-only"),
        ("{shard}", "pipe:cat > x", "cannot be published atomically"),
        ("sftp://host/in.tar", "{tmp}/out.tar", "needs an optional dependency"),
        ("{tmp}/in-{{0..2}}.tar", "{tmp}/out-{{0..1}}.tar", "3 input shards but 2 output"),
        ("{shard}", "{shard}", "both an input and an output"),
    ],
)
def test_bad_urls(tmp_path: Path, shard: Path, source: str, target: str, message: str) -> None:
    fill = {"tmp": tmp_path, "shard": shard}
    result = run_cli("augment", source.format(**fill), target.format(**fill))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out.tar").exists()


def test_pipe_input_works_when_explicitly_allowed(tmp_path: Path, shard: Path) -> None:
    result = run_cli("augment", f"pipe:cat {shard}", tmp_path / "out.tar", "--allow-pipe")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.tar").exists()


def test_gzip_input_is_read_by_its_name(tmp_path: Path, shard: Path) -> None:
    import gzip

    (tmp_path / "in.tar.gz").write_bytes(gzip.compress(shard.read_bytes()))
    result = run_cli("augment", tmp_path / "in.tar.gz", tmp_path / "out.tar", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["samples"]["written"] == 2


def test_recipe_from_yaml_file_and_inline_json_hash_the_same(tmp_path: Path, shard: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "ops:\n  - image: {from: jpg}\n  - resize: {shorter: 32}\n"
        "  - encode: {members: {jpg: image}}\n"
    )
    inline = json.dumps(
        {
            "name": "mine",
            "ops": [
                {"op": "image", "from": ["jpg"]},
                {"op": "resize", "shorter": 32, "resample": "bicubic"},
                {"op": "encode", "members": {"jpg": {"from": "image", "quality": 90}}},
            ],
        }
    )
    hashes = []
    for recipe, name in ((str(tmp_path / "mine.yaml"), "a"), (inline, "b")):
        result = run_cli("augment", shard, tmp_path / f"{name}.tar", "--recipe", recipe)
        assert result.returncode == 0, result.stderr
        hashes.append(json.loads((tmp_path / f"{name}.manifest.json").read_text())["recipe_hash"])
    assert hashes[0] == hashes[1]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_recipe_command_prints_an_editable_recipe(tmp_path: Path) -> None:
    listing = run_cli("recipe")
    assert listing.returncode == 0 and "seed" in listing.stdout and "train-224" in listing.stdout
    shown = run_cli("recipe", "seed")
    assert shown.returncode == 0 and "op: normalize" in shown.stdout
    (tmp_path / "copy.yaml").write_text(shown.stdout)
    again = run_cli("recipe", str(tmp_path / "copy.yaml"))
    assert again.stdout.splitlines()[0] == shown.stdout.splitlines()[0]  # same hash


def test_a_failing_pipe_command_publishes_nothing(tmp_path: Path, shard: Path) -> None:
    result = run_cli("augment", f"pipe:cat {shard}; exit 3", tmp_path / "out.tar", "--allow-pipe")
    assert result.returncode == 1
    assert "exited with status 3" in result.stderr
    assert not (tmp_path / "out.tar").exists()
