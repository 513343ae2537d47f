"""Fault scenarios against real processes (issue 7): nothing acknowledged is ever lost.

The feedback-store faults run against a tiny bundle (fast); the platform faults share one
lab (MLflow server, supervisor, two tiny registered versions) per module and are marked
slow because they start MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from movierec.reliability import faults
from movierec.reliability.harness import FaultSizes, Lab
from tests.unit.test_serving_bundle import make_bundle

SIZES = FaultSizes.for_run(quick=True)


def _explain(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=str)[:3000]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("fault-lab"), SIZES) as started:
        yield started


def test_kill_9_during_a_feedback_burst_loses_no_acknowledged_event(tmp_path: Path) -> None:
    result = faults.kill_during_feedback_burst(make_bundle(tmp_path / "bundle"),
                                               tmp_path / "burst", SIZES)
    assert result["passed"], _explain(result)
    assert result["acknowledged"] >= SIZES.feedback_min_acked
    assert result["lost"] == 0 and result["stored"] >= result["acknowledged"]


def test_a_full_disk_answers_503_loses_nothing_and_recovers(tmp_path: Path) -> None:
    result = faults.disk_full_feedback(make_bundle(tmp_path / "bundle"), tmp_path / "full",
                                       SIZES)
    assert result["passed"], _explain(result)
    assert result["statuses"].get("503", 0) >= 3 and "500" not in result["statuses"]
    assert "full" in result["message_503"] and "retry" in result["message_503"]
    assert result["refused_while_full"] == [503, 503, 503]
    assert result["lost"] == 0 and result["stored"] == result["acknowledged"] > 0
    assert result["recovery_s"] is not None and result["recovery_s"] < 5
    assert not (tmp_path / "full" / "small-fs" / "feedback.db").exists()  # unmounted


@pytest.mark.slow
def test_kill_9_of_production_under_load_is_restarted(lab: Lab) -> None:
    result = faults.kill_production_under_load(lab)
    assert result["passed"], _explain(result)
    assert result["restarted"] and result["restarts"] >= 1
    assert result["seconds_to_ready"] < 30 and result["failures_after_ready"] == 0
    assert result["feedback_acknowledged"] > 0 and result["lost"] == 0
    assert result["requests"] > result["failed"] > 0  # the kill was felt, then it recovered


@pytest.mark.slow
def test_a_corrupted_or_truncated_bundle_is_refused_and_production_keeps_serving(
        lab: Lab) -> None:
    result = faults.corrupted_bundle(lab)
    assert result["passed"], _explain(result)
    assert [a.get("status") for a in result["attempts"][:2]] == [422, 422]
    assert all("sha256" in a["error"] for a in result["attempts"])
    assert "reload to version" in result["attempts"][2]["error"]
    assert result["failed"] == 0 and result["requests"] > 0
    assert result["serving_after"] == result["serving_before"]


@pytest.mark.slow
def test_mlflow_down_mid_pipeline_fails_cleanly_and_stages_keep_serving(lab: Lab) -> None:
    result = faults.mlflow_down(lab)
    assert result["passed"], _explain(result)
    assert result["decision"] == "failed" and "unreachable" in result["reason"]
    assert result["requests"] > 0 and result["failed"] == 0
    assert result["versions_after"] == result["versions_before"]
    assert result["aliases_after"] == result["aliases_before"]
    assert result["history_events_added"] == 0


@pytest.mark.slow
def test_platform_up_reconciles_after_a_crash_mid_promotion(lab: Lab) -> None:
    result = faults.crash_mid_promotion(lab)
    assert result["passed"], _explain(result)
    assert result["disagreed_before"]  # the crash left services and aliases apart
    assert result["serving_after"] == {s: result["aliases_after"][s]
                                       for s in result["serving_after"]}
    assert result["history_consistent"] and result["failed"] == 0
    actions = {(a["stage"], a["action"]) for a in result["reconcile_actions"]}
    assert ("staging", "retired") in actions
    assert ("production", "deployed (reloaded in place)") in actions


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(lab: Lab, tmp_path: Path) -> None:
    result = faults.kill_training_mid_run(lab.data, tmp_path / "train", SIZES,
                                          lab.env_vars())
    assert result["passed"], _explain(result)
    assert result["killed_after_epoch"] >= SIZES.resume_kill_after
    assert result["killed_after_epoch"] < SIZES.resume_epochs  # killed mid-run
    assert result["first_epoch_after_resume"] > result["killed_after_epoch"]  # not restarted
    assert result["difference"] <= result["tolerance"]
