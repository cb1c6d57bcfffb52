"""HTTP inputs from a real server on 127.0.0.1: plain, behind a header, a shard missing from a
batch, and connections dropped mid-read (resumed from the byte reached, or a clear failure;
never a silently short shard)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from servers import Fault, FileServer, Request
from storage_helpers import (
    assert_retryable,
    files_under,
    reference_shard,
    shardflow,
    statuses,
    verify,
)

from shardflow.steps.storage import options_for

from helpers import good_shard

TOKEN = {"Authorization": "Bearer s3cr3t-t0ken"}
SMALL_BLOCKS = 'http={"block_size": 4096}'  # many range requests for one small shard


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Two input shards of six samples to serve."""
    root = tmp_path / "site"
    for index in (0, 2):
        good_shard(root / f"in-{index:06d}.tar", count=6)
    return root


def range_start(request: Request) -> int:
    match = re.fullmatch(r"bytes=(\d+)-\d*", request.headers.get("Range", ""))
    assert match, request.headers
    return int(match[1])


def test_http_input_gives_the_same_shard_as_a_local_file(site: Path, tmp_path: Path) -> None:
    expected = reference_shard(site / "in-000000.tar", tmp_path)
    output = tmp_path / "out" / "out-000000.tar"
    with FileServer(site) as web:
        url = f"{web.url}/in-000000.tar"
        result = shardflow("augment", url, output, "--quiet")
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == expected
    manifest = json.loads(output.with_name("out-000000.manifest.json").read_text())
    assert manifest["input"] == url


def test_an_input_behind_a_header_needs_the_header_and_gets_it_from_options(
    site: Path, tmp_path: Path
) -> None:
    expected = reference_shard(site / "in-000000.tar", tmp_path)
    out = tmp_path / "out"
    headers = {"headers": TOKEN}
    option = json.dumps({"http": headers})
    with FileServer(site, required_headers=TOKEN) as web:
        url = f"{web.url}/in-000000.tar"
        refused = shardflow("augment", url, out / "refused.tar")
        assert_retryable(refused, url, "access refused (HTTP 401)", "headers")
        assert files_under(out) == []
        assert all("Authorization" not in r.headers for r in web.requests())

        by_flag = shardflow(
            "augment", url, out / "flag.tar", "--storage-option", "http=" + json.dumps(headers)
        )
        # From the environment, as a pod gets it: public options from the workflow parameter,
        # the token from a Kubernetes secret, merged per scheme (the token never appears in
        # the workflow's parameters).
        by_env = shardflow(
            "augment",
            url,
            out / "env.tar",
            env={
                "SHARDFLOW_STORAGE_OPTIONS": json.dumps({"http": {"block_size": 1 << 20}}),
                "SHARDFLOW_STORAGE_OPTIONS_SECRET": option,
            },
        )
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_env.returncode == 0, by_env.stderr
    assert (out / "flag.tar").read_bytes() == expected
    assert (out / "env.tar").read_bytes() == expected


def test_a_missing_shard_in_a_batch_fails_alone_and_verify_reports_it(
    site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with FileServer(site) as web:
        inputs = f"{web.url}/in-{{000000..000002}}.tar"
        result = shardflow("augment", inputs, f"{out}/out-{{000000..000002}}.tar")
        assert_retryable(result, f"{web.url}/in-000001.tar", "does not exist")
        code, report = verify(f"{out}/out-{{000000..000002}}.tar", inputs=inputs)
    assert files_under(out) == [
        "out-000000.manifest.json",
        "out-000000.tar",
        "out-000002.manifest.json",
        "out-000002.tar",
    ]
    assert code == 1
    assert statuses(report) == {
        f"{out}/out-000000.tar": "ok",
        f"{out}/out-000001.tar": "missing",
        f"{out}/out-000002.tar": "ok",
    }


def test_a_dropped_connection_is_resumed_from_the_byte_reached(site: Path, tmp_path: Path) -> None:
    expected = reference_shard(site / "in-000000.tar", tmp_path)
    output = tmp_path / "out" / "out.tar"
    with FileServer(site) as web:
        # The third block's response stops after 1000 bytes and the connection closes.
        web.add_fault(Fault("cut", method="GET", skip=2, times=1, after=1000))
        result = shardflow(
            "augment", f"{web.url}/in-000000.tar", output, "--storage-option", SMALL_BLOCKS
        )
        gets = web.requests("GET")
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == expected
    cut = next(i for i, request in enumerate(gets) if request.fault == "cut")
    assert range_start(gets[cut]) > 0
    assert range_start(gets[cut + 1]) == range_start(gets[cut])  # not from byte 0 again


def test_a_connection_that_keeps_dropping_fails_the_shard_clearly(
    site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with FileServer(site) as web:
        url = f"{web.url}/in-000000.tar"
        web.add_fault(Fault("cut", method="GET", skip=2, after=1000))
        result = shardflow("augment", url, out / "out.tar", "--storage-option", SMALL_BLOCKS)
        cuts = [r for r in web.requests("GET") if r.fault == "cut"]
    line = assert_retryable(result, url, "after 5 attempts", "Response payload is not completed")
    assert re.search(r"cannot read the input at byte [1-9]\d*", line)
    assert len(cuts) == 5  # bounded
    assert files_under(out) == []


def test_a_body_cut_short_without_a_length_is_refused_as_truncated(
    site: Path, tmp_path: Path
) -> None:
    """A server that sends no Content-Length ends the body by closing the connection, so a cut
    looks like the end of the file: the strict tar reader still refuses the short archive,
    and exits 1 (a retry may help), not 3: without a length, a cut cannot be told from damage."""
    out = tmp_path / "out"
    with FileServer(site, sized=False) as web:
        url = f"{web.url}/in-000000.tar"
        web.add_fault(Fault("cut", method="GET", after=10_000))
        result = shardflow("augment", url, out / "out.tar")
    assert_retryable(result, url, "truncated", "the connection may have been cut")
    assert files_under(out) == []


def test_storage_options_scoped_by_scheme_reach_only_their_back_end() -> None:
    options = {"block_size": 1, "https": {"headers": TOKEN}, "s3": {"endpoint_url": "http://s3"}}
    web = {"block_size": 1, "headers": TOKEN}
    assert options_for("https://host/a.tar", options) == web
    assert options_for("http://host/a.tar", options) == web  # one back-end for both schemes
    assert options_for("s3://bucket/a.tar", options) == {
        "block_size": 1,
        "endpoint_url": "http://s3",
    }
    assert options_for("/data/a.tar", options) == {"block_size": 1}


def test_a_server_that_ignores_ranges_is_streamed(site: Path, tmp_path: Path) -> None:
    """Python's http.server and some CDNs send the whole file whatever the Range header:
    fsspec's random-access file refuses them, so such an input is read as a stream."""
    expected = reference_shard(site / "in-000000.tar", tmp_path)
    small_blocks = "http=" + json.dumps({"block_size": 4096})  # several blocks for a small shard
    with FileServer(site, ranges=False) as web:
        url = f"{web.url}/in-000000.tar"
        result = shardflow("augment", url, tmp_path / "out.tar", "--storage-option", small_blocks)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.tar").read_bytes() == expected
