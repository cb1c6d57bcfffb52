"""Credentials in URLs (`user:password@`, a signed URL's query string) appear nowhere we write
or print: not in manifests, reports, error lines, plans, nor in the names of outputs written
to a folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from servers import FileServer
from storage_helpers import files_under, shardflow

from shardflow.steps.redact import path_name, redact_text, redact_url

from helpers import good_shard

PASSWORD = "pa55w0rd-SECRET"
SIGNATURE = "SIGNATURE-SECRET"
QUERY = f"?X-Amz-Credential=AKIA-SECRET&X-Amz-Signature={SIGNATURE}"
SECRETS = (PASSWORD, SIGNATURE, "AKIA-SECRET")
BASIC = {"Authorization": "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()}


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


def test_credentials_in_input_urls_are_never_written_or_printed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for index in (0, 2):  # in-000001 is missing: its error line must not leak either
        good_shard(site / f"in-{index:06d}.tar", count=2)
    out = tmp_path / "out"
    with FileServer(site, required_headers=BASIC) as web:
        host = web.url.removeprefix("http://")
        inputs = f"http://reader:{PASSWORD}@{host}/in-{{000000..000002}}.tar{QUERY}"
        augment = shardflow("augment", inputs, f"{out}/", "--json")
        verify = shardflow(
            "verify", f"{out}/in-{{000000..000002}}.tar", "--inputs", inputs,
            "--report", out / "report.json",
        )  # fmt: skip
        parts = tmp_path / "parts"  # verify in batches: a part is written per batch
        batch = ("--shards-per-task", "2", "--parts", parts)
        batches = [
            shardflow("verify", f"{out}/in-{{000000..000002}}.tar", "--inputs", inputs,
                      "--task-index", str(task), *batch)
            for task in (0, 1)
        ]  # fmt: skip
        part_texts = [p.read_text(errors="replace") for p in parts.iterdir()]
        merge = shardflow(
            "verify", f"{out}/in-{{000000..000002}}.tar", "--inputs", inputs,
            "--merge", "--shards-per-task", "2", "--parts", parts, "--json",
        )  # fmt: skip
        plan = shardflow("plan", inputs, f"{out}/", "--json")
        missing = shardflow("augment", f"{web.url}/nothing.tar{QUERY}", out / "x.tar")
    assert augment.returncode == 1, augment.stderr  # in-000001 failed, the others written
    assert "does not exist" in augment.stderr
    names = files_under(out)
    # output names come from the path alone
    assert names == [
        "in-000000.manifest.json",
        "in-000000.tar",
        "in-000002.manifest.json",
        "in-000002.tar",
        "report.json",
    ]
    manifest = json.loads((out / "in-000000.manifest.json").read_text())
    assert manifest["input"] == (
        f"http://REDACTED@{host}/in-000000.tar?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
    )
    assert verify.returncode == 1  # in-000001 is missing
    report = json.loads((out / "report.json").read_text())
    statuses = [shard["status"] for shard in report["shards"]]
    assert statuses == ["ok", "missing", "ok"]  # the redacted inputs still pair up
    assert [b.returncode for b in batches] == [0, 0], batches[0].stderr
    assert len(part_texts) >= 2
    merged = json.loads(merge.stdout)  # the parts' redacted inputs still pair up
    assert [shard["status"] for shard in merged["shards"]] == statuses
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["outputs"] == f"{out}/in-{{000000..000002}}.tar"
    assert missing.returncode == 1
    texts = [p.read_text() for p in out.glob("*.json")] + names + part_texts
    for result in (augment, verify, *batches, merge, plan, missing):
        texts += [result.stdout, result.stderr]
    assert_no_secret(*texts)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("in/x.tar", "in/x.tar"),
        ("s3://bucket/x-{0..9}.tar", "s3://bucket/x-{0..9}.tar"),
        ("https://u:p@h:8080/a/x.tar", "https://REDACTED@h:8080/a/x.tar"),
        ("https://token@h/x.tar", "https://REDACTED@h/x.tar"),
        ("https://h/x.tar?sig=S&se=2030", "https://h/x.tar?sig=REDACTED&se=REDACTED"),
        ("https://h/x.tar?S3CRET#access_token=T", "https://h/x.tar?REDACTED#access_token=REDACTED"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_url(redacted) == redacted


def test_redact_text_finds_urls_in_messages() -> None:
    message = "404, message='Not Found', url='https://u:p@h/x.tar?sig=S' (retrying https://h/y)"
    assert redact_text(message) == (
        "404, message='Not Found', url='https://REDACTED@h/x.tar?sig=REDACTED' "
        "(retrying https://h/y)"
    )


def test_output_names_in_a_folder_come_from_the_path() -> None:
    assert path_name("https://u:p@h/a/x.tar?sig=S") == "x.tar"
    assert path_name("in/x?.tar") == "x?.tar"  # a local name keeps every character
