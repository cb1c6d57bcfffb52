"""Fuzzing recipes: seeded cases (tests/fuzz_recipes.py) through the real loader, then the
real pipeline and tar writer, in this process; one case in 50 also through the CLI.

Properties: a recipe loads or fails with a one-line usage error (RecipeError), nothing else
and never a hang (each case has a deadline); what loads is small when printed and hashed; every
member name the pipeline emits, from the recipe, the input or a plugin, passes the checks
readers apply (a name that cannot is the sample's failure, never a member); the tar writer
never has to refuse one. `make test` runs --fuzz-cases (default 200); `make fuzz` more, with
a fresh --fuzz-seed.
"""

from __future__ import annotations

import io
import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_recipes import NAMES, RecipeCase, recipe_case

from shardflow.steps.errors import UsageError
from shardflow.steps.pipeline import Pipeline
from shardflow.steps.recipe import load_recipe, recipe_yaml
from shardflow.steps.samples import RawSample, written_name_reason
from shardflow.steps.tar_writer import TarWriter

from helpers import image_bytes, run_cli

SECONDS_PER_CASE = 10  # a bomb took 46 s; a bounded case takes milliseconds
CLI_EVERY = 50  # cases also run through `shardflow recipe` in a subprocess
MAX_PRINTED = 4 << 20  # a loaded recipe's canonical JSON is at most this long
RSS_GROWTH_LIMIT_MB = 500


class Hang(Exception):
    pass


@pytest.fixture
def deadline() -> Iterator[None]:
    def expire(signum, frame):
        raise Hang

    previous = signal.signal(signal.SIGALRM, expire)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def sample(case: RecipeCase) -> RawSample:
    """A sample with an image, JSON naming the plugin's fields, text, and odd extensions."""
    document = {"cls": 1, "names": case.plugin_names}
    data = {
        "jpg": image_bytes(32, 24),
        "png": image_bytes(20, 16, fmt="PNG"),
        "json": json.dumps(document).encode(),
        "txt": b"a caption",
        "seg.png": b"not decoded",
        "a.": b"odd but readable",
    }
    return RawSample("dir/0001", data=data, sizes={k: len(v) for k, v in data.items()})


def spec_for(case: RecipeCase, directory: Path) -> str:
    if case.inline:
        return case.text
    path = directory / f"case-{case.number}.yaml"
    path.write_text(case.text, encoding="utf-8", errors="surrogatepass")
    return str(path)


def check_case(case: RecipeCase, spec: str) -> str:
    """Load, run and write one case; the outcome's name ("refused", "written", ...)."""
    try:
        recipe = load_recipe(spec)
    except UsageError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 2000, message[:3000]
        return "refused"
    printed = json.dumps(recipe.canonical())
    assert len(printed) < MAX_PRINTED
    recipe.hash()
    recipe_yaml(recipe)
    try:
        pipeline = Pipeline(recipe, max_pixels=1 << 20, allowed_plugins=["fuzz_recipes"])
    except UsageError:
        return "plugin refused"
    outcome = pipeline.process(sample(case))
    if outcome.members is None:
        assert "unexpected" not in (outcome.failed or ""), outcome.failed
        return "dropped" if outcome.dropped else "failed"
    writer = TarWriter(io.BytesIO())
    for name, data in outcome.members:
        assert written_name_reason(name) is None, name
        writer.add(name, data)  # raises UnsafeMemberName if anything slipped through
    writer.close()
    return "written"


def check_cli(case: RecipeCase, spec: str, directory: Path) -> None:
    if len(spec) > 100_000:  # above what one command-line argument may hold
        return
    if "\x00" in spec:  # no argument can hold a NUL byte (execve): the same text from a file
        path = directory / f"case-{case.number}-nul.json"
        path.write_text(spec, encoding="utf-8", errors="surrogatepass")
        spec = str(path)
    result = run_cli("recipe", spec, clean_env=True, timeout=60)
    assert result.returncode in (0, 2), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]


def test_recipes_load_or_fail_cleanly_and_write_only_safe_member_names(
    request: pytest.FixtureRequest, tmp_path: Path, deadline: None
) -> None:
    count = request.config.getoption("--fuzz-cases")
    seed = request.config.getoption("--fuzz-seed")
    outcomes: dict[str, int] = {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for number in range(count):
        case = recipe_case(seed, number)
        spec = spec_for(case, tmp_path)
        signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)
        try:
            outcome = check_case(case, spec)
        except Hang:
            pytest.fail(f"hung:\n{case.describe()}")
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{case.describe()}") from exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if number % CLI_EVERY == 0:
            try:
                check_cli(case, spec, tmp_path)
            except AssertionError as exc:
                raise AssertionError(f"CLI: {exc}\n{case.describe()}") from exc
        Path(spec).unlink(missing_ok=True) if not case.inline else None
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    assert growth < RSS_GROWTH_LIMIT_MB, f"peak memory grew by {growth:.0f} MB"
    # Both ends are exercised: recipes refused and recipes that ran to written members.
    assert outcomes.get("refused") and outcomes.get("written"), outcomes
    print(f"recipe fuzz, seed {seed}: {count} cases: {outcomes}")


def test_every_hostile_name_is_either_refused_or_written_safely() -> None:
    """Each name of the fuzzer's list as a rename target with passthrough, directly."""
    for name in NAMES:
        encode = {"members": {"cls": {"from": "cls", "format": "raw"}}, "passthrough": True}
        recipe = {"ops": [{"rename": {"fields": {"txt": name}}}, {"encode": encode}]}
        try:
            loaded = load_recipe(json.dumps(recipe))
        except UsageError:
            continue
        case = RecipeCase(0, 0, "", True, [])
        raw = sample(case)
        raw.data["cls"] = b"1"
        outcome = Pipeline(loaded, max_pixels=1 << 20, allowed_plugins=[]).process(raw)
        assert outcome.members is not None, (name, outcome)
        assert all(written_name_reason(n) is None for n, _ in outcome.members), name
