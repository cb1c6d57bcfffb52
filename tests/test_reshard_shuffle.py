"""`shardflow reshard --shuffle`: reproducible, uniform, and read by byte ranges from local
files, HTTP and S3 (moto) on 127.0.0.1; an HTTP server that ignores Range is refused for
--shuffle, and read in order without it."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from reshard_helpers import keys_of, make_inputs, outputs
from servers import FileServer, S3Proxy, S3Server
from storage_helpers import shardflow


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def planned_keys(work: Path) -> list[list[str]]:
    """Each output's keys, as the plan lists them."""
    lines = (json.loads(line) for line in (work / "plan.jsonl").read_text().splitlines())
    return [[sample[1] for sample in line["samples"]] for line in lines]


def test_shuffle_is_reproducible_across_runs_and_thread_counts(tmp_path: Path):
    inputs = make_inputs(tmp_path / "in", 6, 20, size=300)
    results = []
    for run, threads in (("a", "1"), ("b", "8"), ("c", "3")):
        done = shardflow(
            "reshard", inputs, tmp_path / run / "o-%02d.tar", "--shuffle", "42",
            "--shards", "4", "--threads", threads,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results.append([p.read_bytes() for p in outputs(tmp_path / run)])
    assert results[0] == results[1] == results[2]
    in_order = [f"s{s:03d}-{i:05d}" for s in range(6) for i in range(20)]
    shuffled = [k for p in outputs(tmp_path / "a") for k in keys_of(p)]
    assert sorted(shuffled) == in_order and shuffled != in_order
    other = shardflow(
        "reshard", inputs, tmp_path / "d" / "o-%02d.tar", "--shuffle", "43", "--shards", "4"
    )
    assert other.returncode == 0, other.stderr
    assert [k for p in outputs(tmp_path / "d") for k in keys_of(p)] != shuffled


def chi_square_critical(dof: int, z: float = 3.09) -> float:
    """The chi-square quantile at p = 0.999 (z = 3.09), Wilson-Hilferty's approximation."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffle_spreads_every_input_uniformly_over_outputs_and_positions(
    tmp_path: Path, seed: int
):
    """3,000 samples from 10 inputs into 10 outputs: each input's samples in each output
    (10x10 table) and at each tenth of the global order are what a uniform permutation
    gives (chi-square below its 0.999 quantile); a per-input or block shuffle fails."""
    shards, per_shard, parts = 10, 300, 10
    inputs = make_inputs(tmp_path / "in", shards, per_shard, size=8)
    work = tmp_path / "work"
    args = [inputs, tmp_path / "out" / "o-%02d.tar", "--shuffle", str(seed), "--work", work]
    for step in ("count", "plan"):
        done = shardflow("reshard", *args, "--shards", str(parts), "--step", step)
        assert done.returncode == 0, done.stderr
    plan = planned_keys(work)
    assert [len(keys) for keys in plan] == [300] * parts
    source = re.compile(r"s(\d{3})-")
    table = np.zeros((shards, parts))
    for output, keys in enumerate(plan):
        for key in keys:
            match = source.match(key)
            assert match
            table[int(match[1]), output] += 1
    expected = per_shard / parts
    statistic = ((table - expected) ** 2 / expected).sum()
    assert statistic < chi_square_critical((shards - 1) * (parts - 1)), table
    # Neighbours in the input stay neighbours far less often than in order.
    flat = [key for keys in plan for key in keys]
    together = sum(a[:4] == b[:4] for a, b in itertools.pairwise(flat))
    assert together < 2 * len(flat) / shards


@pytest.mark.parametrize("server", ["ranges ignored", "no length"])
def test_http_without_range_support_is_refused_for_shuffle_and_read_in_order_without(
    tmp_path: Path, server: str
):
    root = tmp_path / "site"
    make_inputs(root, 3, 10)
    local = shardflow("reshard", f"{root}/in-{{000..002}}.tar", tmp_path / "ref" / "o-{0..1}.tar")
    assert local.returncode == 0, local.stderr
    settings = {"ranges": False} if server == "ranges ignored" else {"sized": False}
    with FileServer(root, **settings) as web:
        inputs = f"{web.url}/in-{{000..002}}.tar"
        refused = shardflow("reshard", inputs, tmp_path / "out" / "o-{0..1}.tar", "--shuffle", "1")
        assert refused.returncode == 2, refused.stderr
        assert "does not serve byte ranges" in refused.stderr
        assert "--shuffle" in refused.stderr and "Traceback" not in refused.stderr
        assert not list((tmp_path / "out").glob("*.tar"))
        in_order = shardflow("reshard", inputs, tmp_path / "out" / "o-{0..1}.tar")
    assert in_order.returncode == 0, in_order.stderr
    assert [p.read_bytes() for p in outputs(tmp_path / "out")] == [
        p.read_bytes() for p in outputs(tmp_path / "ref")
    ]


def test_http_with_ranges_serves_a_shuffle(tmp_path: Path):
    root = tmp_path / "site"
    make_inputs(root, 3, 10)
    local = shardflow(
        "reshard", f"{root}/in-{{000..002}}.tar", tmp_path / "ref" / "o-{0..1}.tar", "--shuffle",
        "7",
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    with FileServer(root) as web:
        inputs = f"{web.url}/in-{{000..002}}.tar"
        done = shardflow("reshard", inputs, tmp_path / "out" / "o-{0..1}.tar", "--shuffle", "7")
        ranged = [r for r in web.requests("GET") if r.headers.get("Range")]
    assert done.returncode == 0, done.stderr
    assert len(ranged) >= 30  # a request per sample at least (shuffled: no neighbours)
    assert [p.read_bytes() for p in outputs(tmp_path / "out")] == [
        p.read_bytes() for p in outputs(tmp_path / "ref")
    ]


def test_s3_shuffle_by_ranged_gets(s3: S3Server, tmp_path: Path):
    """Inputs and outputs on S3 (moto): the samples are fetched by ranged GETs, no whole
    input is downloaded, and the outputs are the bytes a local reshard writes."""
    root = tmp_path / "in"
    make_inputs(root, 4, 12, size=5000)
    bucket = s3.new_bucket()
    for path in sorted(root.glob("*.tar")):
        s3.put(bucket, f"in/{path.name}", path.read_bytes())
    local = shardflow(
        "reshard", f"{root}/in-{{000..003}}.tar", tmp_path / "ref" / "o-%02d.tar", "--shuffle",
        "3", "--samples-per-shard", "10",
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    with S3Proxy(s3.url) as proxy:
        done = shardflow(
            "reshard", f"s3://{bucket}/in/in-{{000..003}}.tar", f"s3://{bucket}/out/o-%02d.tar",
            "--shuffle", "3", "--samples-per-shard", "10", env=s3.env(proxy.url),
        )  # fmt: skip
        gets = [r for r in proxy.requests("GET") if "/in/" in r.path]
    assert done.returncode == 0, done.stderr
    ranged = [r for r in gets if r.headers.get("Range")]
    assert len(ranged) >= 40 and len(ranged) == len(gets)  # neighbours share a request
    expected = [p.read_bytes() for p in outputs(tmp_path / "ref")]
    assert [s3.get(bucket, f"out/o-{i:02d}.tar") for i in range(5)] == expected
    verified = shardflow("verify", "--plan", f"s3://{bucket}/out/.reshard", env=s3.env())
    assert verified.returncode == 0, verified.stdout
    assert "verify: OK: 5 of 5 shards passed" in verified.stdout
