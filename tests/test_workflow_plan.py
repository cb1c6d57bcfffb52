"""The plan step: task counts from patterns alone, batch sizes, and the parameters the DAG reads."""

from __future__ import annotations

import json

import pytest

from shardflow.steps.errors import UsageError
from shardflow.workflows.plan import MAX_TASKS, plan_tasks

from helpers import run_cli

# Scheme checks are skipped where the test is about arithmetic: gs:// needs the gcs extra.


def test_openimages_size_runs_one_shard_per_task():
    plan = plan_tasks(
        "gs://b/train-{000000..000554}.tar",
        "gs://b/out/train-{000000..000554}.tar",
        check_urls=False,
    )
    assert (plan.shards, plan.shards_per_task, plan.tasks) == (555, 1, 555)
    assert plan.report == "gs://b/out/verify-report.json"
    assert plan.sample_sheet == "gs://b/out/verify-samples.png"


def test_laion_size_is_batched_to_stay_under_the_task_limit():
    plan = plan_tasks("s3://l/{000000..229999}.tar", "s3://l/out/{000000..229999}.tar")
    assert plan.shards == 230_000
    assert plan.shards_per_task == 288  # 230,000 / 800, rounded up
    assert plan.tasks == 799 <= MAX_TASKS
    assert plan.verify_shards_per_task == 1278 and plan.verify_tasks == 180


def test_explicit_batches_round_up_and_too_many_tasks_is_refused():
    plan = plan_tasks("in-{0..9}.tar", "out-{0..9}.tar", "3")
    assert (plan.shards_per_task, plan.tasks) == (3, 4)
    with pytest.raises(UsageError, match=r"make 2346 tasks.*shards-per-task 3 or more"):
        plan_tasks("s3://l/{0000..2345}.tar", "s3://l/o/{0000..2345}.tar", "1")


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_bad_shards_per_task_is_a_usage_error(value):
    with pytest.raises(UsageError, match="shards-per-task"):
        plan_tasks("in-{0..3}.tar", "out-{0..3}.tar", value)


def test_directory_output_gets_a_pattern_of_the_same_names():
    plan = plan_tasks("gs://b/in/train-{000..009}.tar", "gs://b/out/", check_urls=False)
    assert plan.outputs == "gs://b/out/train-{000..009}.tar"
    assert plan.report == "gs://b/out/verify-report.json"


def test_directory_output_whose_names_cannot_be_one_pattern_is_refused():
    with pytest.raises(UsageError, match="give OUTPUT as a pattern"):
        plan_tasks("gs://b/{a,b/c}.tar", "gs://b/out/", check_urls=False)


def test_two_inputs_with_one_output_name_are_refused():
    with pytest.raises(UsageError, match="map to the same output"):
        plan_tasks("gs://b/{x,y}/a-{0..1}.tar", "gs://b/out/", check_urls=False)


def test_report_goes_to_the_deepest_directory_holding_every_output():
    plan = plan_tasks("in/{a,b}/x.tar", "gs://b/out/{train,val}/x.tar", check_urls=False)
    assert plan.report == "gs://b/out/verify-report.json"
    assert plan_tasks("a.tar", "b.tar").report == "verify-report.json"


def test_mismatched_patterns_and_unknown_schemes_are_usage_errors():
    with pytest.raises(UsageError, match="4 input shards but 3 output shards"):
        plan_tasks("in-{0..3}.tar", "out-{0..2}.tar")
    with pytest.raises(UsageError, match="unknown URL scheme"):
        plan_tasks("in-{0..3}.tar", "nope://b/out-{0..3}.tar")
    plan_tasks("in-{0..3}.tar", "nope://b/out-{0..3}.tar", check_urls=False)


def test_plan_command_writes_one_file_per_output_parameter(tmp_path):
    params = tmp_path / "params"
    result = run_cli(
        "plan", "--shards-per-task=2", "--write-params", params, "--", "in-{0..4}.tar", "out/"
    )
    assert result.returncode == 0, result.stderr
    written = {path.name: path.read_text() for path in params.iterdir()}
    assert written == {
        "tasks": "3",
        "shards-per-task": "2",
        "outputs": "out/in-{0..4}.tar",
        "report": "out/verify-report.json",
        "sample-sheet": "out/verify-samples.png",
        "verify-tasks": "5",
        "verify-shards-per-task": "1",
        "report-dir": "out",
        "verify-parts": "out/.verify-parts",
    }
    assert "5 shard(s) in 3 augment task(s) of 2 shards" in result.stdout


def test_plan_command_checks_the_recipe_and_prints_json():
    bad = run_cli("plan", "--recipe", "{not json", "in.tar", "out.tar")
    assert bad.returncode == 2 and "inline recipe is not valid JSON" in bad.stderr
    good = run_cli("plan", "--json", "--recipe", "train-224", "in-{0..1}.tar", "out-{0..1}.tar")
    assert json.loads(good.stdout)["tasks"] == "2"


@pytest.mark.parametrize(
    ("item", "allowed"),
    [
        ("cpu=2'\nfoo: bar", "1, 2, 4, 8, 16"),  # would add a field to the podSpecPatch
        ("memory={{workflow.parameters.input}}", "1Gi, 2Gi, 4Gi, 8Gi, 16Gi, 32Gi"),
        ("retries=100", "0, 1, 2, 3, 5, 10"),
        ("on-error=ignore", "skip, fail"),
        ("retry-backoff=30s\n", "a whole number of seconds or minutes up to 1 day"),
        ("retry-backoff=2000m", "a whole number of seconds or minutes up to 1 day"),
    ],
)
def test_plan_refuses_a_parameter_outside_its_allowed_values(item, allowed, tmp_path):
    """Argo does not enforce enums for `argo submit -p` or the API: the plan pod does."""
    params = tmp_path / "params"
    result = run_cli(
        "plan", f"--check-parameter={item}", "--write-params", params, "in.tar", "out.tar"
    )
    assert result.returncode == 2
    name = item.partition("=")[0]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shardflow plan: error: parameter {name}=")
    assert lines[0].endswith(f"is not one of {allowed}" + ("" if "," in allowed else ", e.g. 30s"))
    assert not params.exists()  # nothing for the DAG to fan out over


def test_plan_accepts_every_allowed_value():
    from shardflow.workflows.parameters import PARAMETERS

    checks = [f"--check-parameter={p.name}={v}" for p in PARAMETERS for v in p.enum]
    checks += ["--check-parameter=retry-backoff=1s", "--check-parameter=retry-backoff=1440m"]
    result = run_cli("plan", *checks, "in.tar", "out.tar")
    assert result.returncode == 0, result.stderr


def test_plan_passes_on_the_checked_values_that_set_pod_resources(tmp_path):
    params = tmp_path / "params"
    checks = [
        "--check-parameter=cpu=4",
        "--check-parameter=memory=8Gi",
        "--check-parameter=retries=3",
    ]
    result = run_cli("plan", *checks, "--write-params", params, "in.tar", "out.tar")
    assert result.returncode == 0, result.stderr
    assert (params / "cpu").read_text() == "4" and (params / "memory").read_text() == "8Gi"
    assert not (params / "retries").exists()  # not in a pod spec: read from the parameter
