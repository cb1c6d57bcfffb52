"""`shardflow submit` against a stand-in Argo server on 127.0.0.1 that checks what the real API
server would: the path, the bearer token, and a body holding a schema-valid Workflow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from shardflow.workflows.cli import main

from helpers import run_cli

TOKEN = "s3cr3t"
NAMESPACE = "ml"


class ArgoServer:
    """POST /api/v1/workflows/{namespace}: validate, remember, answer like Argo."""

    def __init__(self, validate) -> None:
        self.validate = validate
        self.received: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, {"code": 16, "message": "token not valid"})
                if self.path != f"/api/v1/workflows/{NAMESPACE}":
                    return self._answer(404, {"code": 5, "message": f"no route {self.path}"})
                workflow = json.loads(body)["workflow"]
                problems = server.validate(workflow)
                if problems:
                    return self._answer(400, {"code": 3, "message": "; ".join(problems)})
                server.received.append(workflow)
                created = {**workflow, "metadata": {"name": "shardflow-augment-x7k2p"}}
                self._answer(200, created)

            def _answer(self, status: int, document: dict) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def argo(argo_validator) -> Iterator[ArgoServer]:
    server = ArgoServer(argo_validator)
    yield server
    server.close()


def env(server: ArgoServer, **extra: str) -> dict[str, str]:
    return {
        "ARGO_SERVER": server.address,
        "ARGO_SECURE": "false",
        "ARGO_TOKEN": TOKEN,
        "ARGO_NAMESPACE": NAMESPACE,
        **extra,
    }


def parameters(workflow: dict) -> dict[str, str]:
    return {p["name"]: p.get("value") for p in workflow["spec"]["arguments"]["parameters"]}


def test_submit_posts_a_valid_workflow_and_prints_name_and_link(argo):
    result = run_cli(
        "submit",
        "gs://data/train-{000000..000554}.tar",
        "gs://data/aug/",
        "--recipe",
        "train-224",
        "-p",
        "cpu=4",
        env=env(argo),
    )
    assert result.returncode == 0, result.stderr
    (workflow,) = argo.received
    assert workflow["kind"] == "Workflow" and workflow["spec"]["templates"]
    values = parameters(workflow)
    assert values["input"] == "gs://data/train-{000000..000554}.tar"
    assert (values["recipe"], values["cpu"], values["memory"]) == ("train-224", "4", "4Gi")
    assert result.stdout.splitlines() == [
        f"submitted shardflow-augment-x7k2p to namespace {NAMESPACE}",
        f"http://{argo.address}/workflows/{NAMESPACE}/shardflow-augment-x7k2p?tab=workflow",
    ]
    assert "555 shard(s) in 555 augment task(s)" in result.stderr


def test_submit_from_template_sends_a_reference_and_a_local_recipe_inline(argo, tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(
        "ops:\n- image: {from: jpg}\n- resize: {shorter: 64}\n- encode: {members: {jpg: image}}\n"
    )
    result = run_cli(
        "submit",
        "s3://b/in-{0..9}.tar",
        "s3://b/out-{0..9}.tar",
        "--recipe",
        recipe,
        "--from-template",
        env=env(argo),
    )
    assert result.returncode == 0, result.stderr
    (workflow,) = argo.received
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "shardflow-augment"}
    # Only fields Argo lets a templateRef override under templateReferencing: Strict/Secure.
    assert set(workflow["spec"]) <= {"arguments", "workflowTemplateRef"}
    inline = json.loads(parameters(workflow)["recipe"])
    assert inline["name"] == "small" and inline["ops"][1] == {"resize": {"shorter": 64}}


def test_submit_from_template_refuses_to_override_parallelism(argo, monkeypatch, capsys):
    status, err = submit_in_process(
        monkeypatch, capsys, argo, "a-{0..1}.tar", "b/", "--from-template", "--parallelism", "8"
    )
    assert status == 2 and "--parallelism cannot change an installed template's" in err
    assert argo.received == []


def submit_in_process(monkeypatch, capsys, server: ArgoServer, *args: str, **variables: str):
    """The command in this process: error paths, where a subprocess adds only seconds."""
    for name, value in env(server, **variables).items():
        monkeypatch.setenv(name, value)
    status = main(["submit", *args])
    return status, capsys.readouterr().err


def test_refused_submissions_are_one_line_errors(argo, monkeypatch, capsys):
    status, err = submit_in_process(monkeypatch, capsys, argo, "a.tar", "b.tar", ARGO_TOKEN="no")
    assert status == 1 and "refused the workflow" in err and "token not valid" in err
    status, err = submit_in_process(
        monkeypatch, capsys, argo, "a.tar", "b.tar", ARGO_NAMESPACE="other"
    )
    assert status == 1 and "no route" in err
    status, err = submit_in_process(
        monkeypatch, capsys, argo, "a.tar", "b.tar", ARGO_SERVER="127.0.0.1:9"
    )
    assert status == 1 and "cannot reach the Argo server" in err
    assert argo.received == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a-{0..3}.tar", "b-{0..2}.tar"], "4 input shards but 3 output shards"),
        (["a.tar", "b.tar", "-p", "memory=lots"], "is not one of"),
        (["a.tar", "b.tar", "--recipe", "{bad"], "inline recipe is not valid JSON"),
        (["a.tar", "b.tar", "-p", "shards-per-task=0"], "shards-per-task"),
        (["a.tar", "b.tar", "-p", "colour=red"], "unknown parameter 'colour'"),
    ],
)
def test_usage_errors_fail_before_anything_is_sent(argo, monkeypatch, capsys, args, message):
    status, err = submit_in_process(monkeypatch, capsys, argo, *args)
    assert status == 2 and message in err
    assert argo.received == []


def test_submit_needs_a_server(argo, monkeypatch, capsys):
    status, err = submit_in_process(monkeypatch, capsys, argo, "a.tar", "b.tar", ARGO_SERVER="")
    assert status == 2 and "set ARGO_SERVER" in err


def test_dry_run_prints_a_valid_workflow_whose_size_does_not_grow_with_the_dataset(
    argo_validator,
):
    small = run_cli("submit", "--dry-run", "gs://b/{000000..000009}.tar", "gs://b/o/")
    large = run_cli("submit", "--dry-run", "gs://b/{000000..999999}.tar", "gs://b/o/")
    assert small.returncode == 0 and large.returncode == 0, small.stderr + large.stderr
    for printed in (small, large):
        assert argo_validator(yaml.safe_load(printed.stdout)) == []
    # The two manifests differ only in the pattern strings (twice each: input and output).
    assert len(large.stdout) - len(small.stdout) == 2 * (len("999999") - len("000009"))
    assert "1000000 shard(s) in 800 augment task(s) of 1250 shards" in large.stderr


def test_submit_from_the_reshard_template_sends_its_parameters(argo):
    result = run_cli(
        "submit", "s3://b/in/{000..099}.tar", "s3://b/out/w-%05d.tar",
        "--from-template", "shardflow-reshard", "-p", "shards=64", "-p", "shuffle=7",
        env=env(argo),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (workflow,) = argo.received
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "shardflow-reshard"}
    assert workflow["metadata"]["generateName"] == "shardflow-reshard-"
    assert parameters(workflow) == {
        "inputs": "s3://b/in/{000..099}.tar",
        "outputs": "s3://b/out/w-%05d.tar",
        "shards": "64",
        "shuffle": "7",
    }
    assert "reshard: 100 input shard(s)" in result.stderr
    refused = run_cli(
        "submit", "s3://b/in/{0..9}.tar", "s3://b/out/%d.tar", "--from-template",
        "shardflow-reshard", "-p", "rename-duplicates=maybe", env=env(argo),
    )  # fmt: skip
    assert refused.returncode == 2 and "rename-duplicates" in refused.stderr
    assert len(argo.received) == 1
