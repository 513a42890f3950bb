"""One cluster for a range of days: the days, the step plan and each day's outcome (pure parts)."""

from __future__ import annotations

import pytest

from fruits_platform.aws import backfill
from fruits_platform.aws.guards import GuardRefused
from fruits_spark.contract import STEP_NAMES


def test_a_range_is_every_day_between_included():
    assert backfill.days_in_range("2026-10-30", "2026-11-02") == [
        "2026-10-30",
        "2026-10-31",
        "2026-11-01",
        "2026-11-02",
    ]
    assert backfill.days_in_range("2026-11-05", "2026-11-05") == ["2026-11-05"]


@pytest.mark.parametrize(
    ("from_dt", "to_dt", "reason"),
    [
        ("2026-11-07", "2026-11-01", "to_dt 2026-11-01 is before from_dt 2026-11-07"),
        ("2026-01-01", "2026-03-01", "60 days from 2026-01-01 to 2026-03-01: at most 31"),
        ("2026-11-01", "", "must be dates YYYY-MM-DD"),
        ("11/01/2026", "2026-11-02", "must be dates YYYY-MM-DD"),
    ],
)
def test_an_unusable_range_is_refused_with_the_reason(from_dt, to_dt, reason):
    with pytest.raises(GuardRefused, match=reason):
        backfill.days_in_range(from_dt, to_dt)


def test_each_day_reads_its_uploads_and_writes_its_partitions():
    pipeline = {"input": "s3://b/whatever/", "output": "s3://b/features/", "dt": "2026-11-30", "k": 3}
    day = backfill.day_pipeline(pipeline, "b", "2026-11-02")
    assert (day.input, day.output, day.dt, day.k) == (
        "s3://b/uploads/dt=2026-11-02/",
        "s3://b/features/",
        "2026-11-02",
        3,
    )


def step(state: str, **failure) -> dict:
    return {"Status": {"State": state, **({"FailureDetails": failure} if failure else {})}}


def test_a_failed_day_is_reported_and_the_other_days_stay_done():
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    ids = [f"s-{i}" for i in range(len(days) * len(STEP_NAMES))]
    steps = {i: step("COMPLETED") for i in ids}
    # day 2's features failed; its pca ran anyway (CONTINUE) and failed for want of features
    steps["s-4"] = step("FAILED", Message="features: cannot load weights", LogFile="s3://b/emr-logs/x")
    steps["s-5"] = step("FAILED")
    outcomes = backfill.day_outcomes(days, ids, steps)
    assert outcomes["2026-11-01"] == {"state": "COMPLETED"}
    assert outcomes["2026-11-03"] == {"state": "COMPLETED"}
    assert outcomes["2026-11-02"] == {
        "state": "FAILED",
        "step": "features",
        "step_id": "s-4",
        "reason": "features: cannot load weights",
        "log": "s3://b/emr-logs/x",
    }
    assert backfill.all_ended(ids, steps)
    steps["s-8"] = step("RUNNING")
    assert not backfill.all_ended(ids, steps)
    with pytest.raises(ValueError, match="8 step ids for 9 planned steps"):
        backfill.day_outcomes(days, ids[:-1], steps)
