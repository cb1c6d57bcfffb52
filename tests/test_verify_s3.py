"""verify as the Argo DAG runs it: outputs on S3 (moto on 127.0.0.1), the report and the
sample sheet written to S3, the summary to a local file; a shard cut short on S3 is caught."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image
from servers import S3Server
from storage_helpers import shardflow

from shardflow.steps.tar_reader import TarReader

from helpers import good_shard


def test_verify_on_s3_writes_report_and_sheet_there_and_catches_a_cut_shard(tmp_path: Path):
    for index in range(2):
        good_shard(tmp_path / "in" / f"in-{index:06d}.tar", count=3)
    inputs = str(tmp_path / "in" / "in-{000000..000001}.tar")
    with S3Server() as s3:
        bucket = s3.new_bucket()
        outputs = f"s3://{bucket}/out/out-{{000000..000001}}.tar"
        env = s3.env()
        assert shardflow("augment", inputs, outputs, "--quiet", env=env).returncode == 0
        summary = tmp_path / "summary.txt"
        arguments = [
            "verify",
            outputs,
            "--inputs",
            inputs,
            "--report",
            f"s3://{bucket}/verify-report.json",
            "--sample-sheet",
            f"s3://{bucket}/sample-sheet.png",
            "--summary-file",
            summary,
        ]
        done = shardflow(*arguments, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert summary.read_text().startswith("verify: OK: 2 of 2 shards passed; 6 samples")
        report = json.loads(s3.get(bucket, "verify-report.json"))
        assert [shard["status"] for shard in report["shards"]] == ["ok", "ok"]
        sheet = Image.open(io.BytesIO(s3.get(bucket, "sample-sheet.png")))
        assert sheet.format == "PNG"

        shard = s3.get(bucket, "out/out-000001.tar")
        cut = list(TarReader(io.BytesIO(shard)))[2].offset
        s3.put(bucket, "out/out-000001.tar", shard[:cut])
        done = shardflow(*arguments, env=env)
        assert done.returncode == 1
        assert summary.read_text().startswith("verify: FAILED: 1 of 2 shards did not pass")
        problems = json.loads(s3.get(bucket, "verify-report.json"))["shards"][1]["problems"]
        assert problems[0]["kind"] == "truncated"
        assert "end-of-archive blocks" in problems[0]["message"]


def test_verify_in_batches_on_s3_publishes_parts_and_merges_them_there(tmp_path: Path):
    """The DAG's fan-out on S3: each batch publishes its part and table beside the outputs,
    the merge writes the report, index and dataset report there and removes the parts."""
    for index in range(3):
        good_shard(tmp_path / "in" / f"in-{index:06d}.tar", count=2)
    inputs = str(tmp_path / "in" / "in-{000000..000002}.tar")
    with S3Server() as s3:
        bucket = s3.new_bucket()
        out = f"s3://{bucket}/out"
        outputs = f"{out}/out-{{000000..000002}}.tar"
        env = s3.env()
        assert shardflow("augment", inputs, outputs, "--quiet", env=env).returncode == 0
        common = ["--inputs", inputs, "--dataset-report", out, outputs]
        batches = ["--shards-per-task", "2", "--parts", f"{out}/.verify-parts"]
        for task in range(2):
            done = shardflow("verify", "--task-index", str(task), *batches, *common, env=env)
            assert done.returncode == 0, done.stdout + done.stderr
        assert "out/.verify-parts/part-000001.json" in s3.keys(bucket)
        merged = shardflow(
            "verify",
            "--merge",
            *batches,
            "--report",
            f"{out}/verify-report.json",
            "--write-index",
            *common,
            env=env,
        )
        assert merged.returncode == 0, merged.stdout + merged.stderr
        keys = s3.keys(bucket)
        assert not [k for k in keys if ".verify-parts/" in k]
        assert {
            "out/dataset-samples/part-000000.jsonl",
            "out/dataset-samples/part-000001.jsonl",
            "out/out.shardindex.json",
            "out/dataset-duplicates.jsonl",
        } <= set(keys)
        report = json.loads(s3.get(bucket, "out/dataset-report.json"))
        assert report["counts"]["samples"] == 6 and report["manifests"]["shards"] == 3
        verdict = json.loads(s3.get(bucket, "out/verify-report.json"))
        assert [shard["status"] for shard in verdict["shards"]] == ["ok"] * 3
