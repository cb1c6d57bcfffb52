"""Argo's depends expressions as the local executor evaluates them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shardflow.workflows.depends import DependsError, TaskOutcome, evaluate, task_names

ARGO = Path(__file__).resolve().parents[1] / "argo"
VERIFY = "plan.Succeeded && (augment.Succeeded || augment.Failed || augment.Errored)"


def outcomes(**phases: str) -> dict[str, TaskOutcome]:
    return {name: TaskOutcome(phase) for name, phase in phases.items()}


@pytest.mark.parametrize(
    ("augment", "runs"),
    [("Succeeded", True), ("Failed", True), ("Errored", True), ("Omitted", False)],
)
def test_verify_runs_whatever_augment_did(augment, runs):
    assert evaluate(VERIFY, outcomes(plan="Succeeded", augment=augment)) is runs


def test_verify_does_not_run_when_plan_failed():
    assert not evaluate(VERIFY, outcomes(plan="Failed", augment="Omitted"))


REPORT = "verify.Succeeded || verify.Failed || verify.Errored"


@pytest.mark.parametrize(
    ("verify", "runs"),
    [("Succeeded", True), ("Failed", True), ("Errored", True), ("Omitted", False)],
)
def test_report_merges_whatever_the_verify_batches_did(verify, runs):
    """A failed batch leaves no part: the merge runs and names it; no verify, no report."""
    assert evaluate(REPORT, outcomes(verify=verify)) is runs


def test_the_rendered_dag_has_these_expressions():
    manifest = yaml.safe_load((ARGO / "workflow.yaml").read_text())
    main = next(t for t in manifest["spec"]["templates"] if "dag" in t)
    tasks = {t["name"]: t for t in main["dag"]["tasks"]}
    assert tasks["verify"]["depends"] == VERIFY
    assert tasks["report"]["depends"] == REPORT


def test_a_bare_name_means_succeeded_skipped_or_daemoned():
    for phase, expected in [("Succeeded", True), ("Skipped", True), ("Failed", False)]:
        assert evaluate("a", outcomes(a=phase)) is expected


def test_negation_precedence_and_groups():
    state = outcomes(a="Succeeded", b="Failed", c="Succeeded")
    assert evaluate("!b.Succeeded && a", state)
    assert evaluate("b.Succeeded || a && c", state)  # && binds tighter
    assert not evaluate("(b.Succeeded || a) && !c", state)


def test_fan_out_results():
    group = {"t": TaskOutcome("Failed", ["Succeeded", "Failed"])}
    assert evaluate("t.AnySucceeded", group)
    assert not evaluate("t.AllFailed", group)
    assert evaluate("t.AllFailed", {"t": TaskOutcome("Failed", ["Failed", "Failed"])})


def test_task_names():
    assert task_names(VERIFY) == {"plan", "augment"}
    assert task_names("task-2.Failed || !other") == {"task-2", "other"}


@pytest.mark.parametrize("expression", ["a &&", "(a", "a.Finished", "a ; rm -rf /", "a b"])
def test_malformed_expressions_are_refused(expression):
    with pytest.raises(DependsError):
        evaluate(expression, outcomes(a="Succeeded", b="Succeeded"))
