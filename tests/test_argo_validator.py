"""Argo's own validator on every manifest shardflow writes: argo/*.yaml, `render`, `submit`, ...

The JSON schema (test_render) checks shapes only; Argo's validator is what `argo lint` and the
server run before a workflow is accepted: references resolve, names and expressions are valid,
and (strict decoding) no field is unknown to that Argo version. The validators are Go programs
under tests/argo/ that import Argo's packages (v3.7 and v4.0) and run what `argo lint --offline`
runs; `make argo-lint` (a prerequisite of `make test`) builds them into tests/.bin/.

VARIANTS is the one list of manifests validated: add a row when a command or test renders a
manifest in a new way (a new option, a new kind of parameter value).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from shardflow.workflows import dag, index_dag
from shardflow.workflows.cli import build_parser, main
from shardflow.workflows.parameters import BY_NAME

ROOT = Path(__file__).resolve().parents[1]
ARGO = ROOT / "argo"
BIN = ROOT / "tests" / ".bin"
VERSIONS = ("v3", "v4")
RECIPE = json.dumps(
    {
        "name": "small",
        "ops": [
            {"image": {"from": "jpg"}},
            {"resize": {"shorter": 64}},
            {"encode": {"members": {"jpg": "image"}}},
        ],
    },
    separators=(",", ":"),
)
TEMPLATE = "shardflow-augment"  # the WorkflowTemplate's name, as --from-template defaults to

# Parameter values as the tests and a user pass them: defaults, each enum's other values, inline
# JSON in a parameter, storage options. (A huge pattern changes only the pattern strings, and
# planning a million shards takes a minute: test_submit covers it.)
PARAMETERS = {
    "defaults": ["gs://b/{000000..000009}.tar", "gs://b/o/"],
    "built-in-recipe-and-cpu": [
        "gs://data/train-{000000..000554}.tar",
        "gs://data/aug/",
        "--recipe",
        "train-224",
        "-p",
        "cpu=4",
    ],
    "inline-recipe": ["s3://b/in-{0..9}.tar", "s3://b/out-{0..9}.tar", "--recipe", RECIPE],
    "every-option": [
        "https://example.org/in-{00..19}.tar",
        "s3://b/out/",
        "--shards-per-task",
        "4",
        "--on-error",
        "fail",
        "-p",
        "memory=16Gi",
        "-p",
        "retries=0",
        "-p",
        "retry-backoff=2m",
        "-p",
        "max-failed=5%",
        "-p",
        "image=registry.example/shardflow:1",
        "-p",
        "service-account=shardflow",
        "-p",
        'storage-options={"endpoint_url": "http://minio:9000"}',
    ],
}


def _shardflow(*args: str) -> str:
    """stdout of `shardflow ARGS`, run in this process (a subprocess per variant adds seconds)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    assert status == 0, f"shardflow {' '.join(args)} exited {status}: {err.getvalue()}"
    return out.getvalue()


def _checked_in() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(ARGO.glob("*.yaml"))}


def _files(command: str, args: tuple[str, ...]) -> dict[str, str]:
    """File name -> text of one variant, linted together: a workflowTemplateRef resolves
    against the template beside it, as `argo lint --offline` resolves it."""
    if command == "argo/*.yaml":
        return _checked_in()
    if command == "render":
        return {"render.yaml": _shardflow("render", "--out", "-", *args)}
    if command == "index_dag":  # rendered by its module, not by `shardflow render`
        image, parallelism = args
        settings = dag.RenderSettings(image=image, parallelism=int(parallelism))
        return {index_dag.FILE: index_dag.render_index(settings)}
    files = {"workflow.yaml": _shardflow("submit", "--dry-run", *args)}
    if "--from-template" in args:  # the reference, with the template a cluster would hold
        files["workflowtemplate.yaml"] = _checked_in()["workflowtemplate.yaml"]
    return files


# id -> (command, its arguments).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "argo/*.yaml": ("argo/*.yaml", ()),
    "render": ("render", ()),
    "render --image --parallelism": (
        "render",
        ("--image", "registry.example/shardflow:1", "--parallelism", "200"),
    ),
    "index_dag image parallelism": ("index_dag", ("registry.example/shardflow:1", "200")),
    **{f"submit {name}": ("submit", tuple(args)) for name, args in PARAMETERS.items()},
    # Not with --from-template: the installed template's parallelism applies.
    "submit --parallelism": ("submit", (*PARAMETERS["defaults"], "--parallelism", "8")),
    **{
        f"submit --from-template {name}": ("submit", ("--from-template", TEMPLATE, *args))
        for name, args in PARAMETERS.items()
    },
}
# Options that do not change the manifest printed.
NOT_IN_MANIFEST = {"--help", "--dry-run", "--namespace", "--out", "--write"}


@pytest.fixture(scope="session")
def argo_lint():
    """lint(version, files) -> (exit status, Argo's output); fails when the binary is missing."""

    def lint(version: str, files: list[Path]) -> tuple[int, str]:
        binary = BIN / f"argo-lint-{version}"
        if not binary.is_file():
            pytest.fail(
                f"{binary} is missing: run `make argo-lint` (needs Go; `make test` builds it)"
            )
        result = subprocess.run([binary, *files], capture_output=True, text=True, timeout=120)
        return result.returncode, (result.stdout + result.stderr).strip()

    return lint


def _write(directory: Path, texts: dict[str, str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (directory / name).write_text(text)
    return [directory / name for name in texts]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_argo_accepts_the_manifest(variant, version, argo_lint, tmp_path):
    files = _write(tmp_path, _files(*VARIANTS[variant]))
    status, output = argo_lint(version, files)
    assert status == 0, f"Argo {version} refuses {variant}:\n{output}"


def _broken_workflows() -> dict[str, tuple[dict, str]]:
    """Manifests Argo refuses, each with a phrase of Argo's own message about it."""
    workflow = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    dangling = json.loads(json.dumps(workflow))
    main_dag = next(t for t in dangling["spec"]["templates"] if t["name"] == "main")["dag"]
    main_dag["tasks"][0]["template"] = "no-such-template"
    unknown = json.loads(json.dumps(workflow))
    unknown["spec"]["templates"][0]["retryStrategy"]["backof"] = {"duration": "30s"}
    return {
        "dangling template reference": (dangling, "no-such-template"),
        "unknown field": (unknown, "backof"),
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(_broken_workflows()))
def test_argo_refuses_a_broken_manifest_with_its_own_message(case, version, argo_lint, tmp_path):
    """The validator can fail: a broken copy of argo/workflow.yaml is reported, by name."""
    manifest, phrase = _broken_workflows()[case]
    files = _write(tmp_path, {"broken.yaml": yaml.safe_dump(manifest)})
    status, output = argo_lint(version, files)
    assert status != 0, output
    assert phrase in output and "broken.yaml" in output, output


@pytest.mark.parametrize("version", VERSIONS)
def test_a_template_reference_resolves_only_against_the_templates_given(
    version, argo_lint, tmp_path
):
    """Offline resolution is real: without the WorkflowTemplate beside it, the reference fails."""
    workflow = _files("submit", ("--from-template", TEMPLATE, *PARAMETERS["defaults"]))[
        "workflow.yaml"
    ]
    files = _write(tmp_path, {"workflow.yaml": workflow})
    status, output = argo_lint(version, files)
    assert status != 0, output
    assert TEMPLATE in output, output


def _subcommand_options(command: str) -> list[list[str]]:
    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return [action.option_strings for action in subparsers.choices[command]._actions]


@pytest.mark.parametrize("command", ["render", "submit"])
def test_variants_use_every_option_that_changes_the_manifest(command):
    """A new option of `render` or `submit` fails here until a variant above uses it."""
    used = {arg for kind, args in VARIANTS.values() if kind == command for arg in args}
    missing = [
        options[-1]
        for options in _subcommand_options(command)
        if options and not NOT_IN_MANIFEST.intersection(options) and not used.intersection(options)
    ]
    assert missing == [], f"add a VARIANTS row that uses {missing}"


def test_variants_give_every_parameter_a_value_other_than_its_default():
    """A new workflow parameter fails here until a variant above sets it."""
    changed: set[str] = set()
    for args in PARAMETERS.values():
        workflow = yaml.safe_load(_files("submit", tuple(args))["workflow.yaml"])
        for parameter in workflow["spec"]["arguments"]["parameters"]:
            if parameter.get("value") != BY_NAME[parameter["name"]].default:
                changed.add(parameter["name"])
    assert sorted(set(BY_NAME) - changed) == []
