"""One cluster for a range of upload days: the DAG ``fruits_features_emr_backfill``.

Airflow's own backfill makes one run, hence one cluster and one start-up, per day. Here the days of a range
are steps of one cluster: each day's ingest, features and pca, in day order, each day reading its own
``uploads/dt=D/`` and writing its own ``dt=D`` partitions, exactly as that day's daily run would. A failing
step does not end the cluster (ActionOnFailure CONTINUE): the days after it still run and the days before
it are already written; the day is reported with its step, reason and log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from fruits_platform.aws import guards, staging
from fruits_platform.pipeline import PipelineParams
from fruits_spark.contract import STEP_NAMES

# a month of days on one cluster at most: the range's cost bound grows with every day's step limits
MAX_RANGE_DAYS = 31
ENDED_STEP_STATES = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")


def days_in_range(from_dt: str, to_dt: str) -> list[str]:
    """Every upload day from ``from_dt`` to ``to_dt`` included (YYYY-MM-DD); GuardRefused when unusable."""
    try:
        first, last = dt.date.fromisoformat(from_dt), dt.date.fromisoformat(to_dt)
    except (TypeError, ValueError):
        raise guards.GuardRefused(
            f"params from_dt and to_dt must be dates YYYY-MM-DD, got {from_dt!r} and {to_dt!r}"
        ) from None
    count = (last - first).days + 1
    if count < 1:
        raise guards.GuardRefused(f"to_dt {to_dt} is before from_dt {from_dt}")
    if count > MAX_RANGE_DAYS:
        raise guards.GuardRefused(
            f"{count} days from {from_dt} to {to_dt}: at most {MAX_RANGE_DAYS} on one cluster; split the range"
        )
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def day_pipeline(pipeline: Mapping[str, Any], bucket: str, day: str) -> PipelineParams:
    """The run's pipeline params for one day of the range: that day's uploads, that day's partitions."""
    return PipelineParams(
        **{**pipeline, "input": staging.s3_uri(bucket, guards.uploads_prefix(day)), "dt": day}
    )


def step_plan(days: Sequence[str]) -> list[tuple[str, str]]:
    """(day, step) of every EMR step, in the order they are added: day by day, each day's steps in order."""
    return [(day, name) for day in days for name in STEP_NAMES]


def day_outcomes(
    days: Sequence[str], step_ids: Sequence[str], steps: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each day's outcome from its steps' ``describe_step`` records (``steps``: id -> Step): done when every
    step COMPLETED, else the first step that did not, its state and EMR's reason."""
    plan = step_plan(days)
    if len(step_ids) != len(plan):
        raise ValueError(f"{len(step_ids)} step ids for {len(plan)} planned steps ({len(days)} days)")
    outcomes: dict[str, dict[str, Any]] = {day: {"state": "COMPLETED"} for day in days}
    for (day, name), step_id in zip(plan, step_ids, strict=True):
        status = (steps.get(step_id) or {}).get("Status", {})
        state = status.get("State", "UNKNOWN")
        if state != "COMPLETED" and outcomes[day]["state"] == "COMPLETED":
            details = status.get("FailureDetails") or {}
            outcomes[day] = {
                "state": state,
                "step": name,
                "step_id": step_id,
                "reason": details.get("Message") or details.get("Reason") or state,
                "log": details.get("LogFile"),
            }
    return outcomes


def all_ended(step_ids: Sequence[str], steps: Mapping[str, Mapping[str, Any]]) -> bool:
    return all((steps.get(i) or {}).get("Status", {}).get("State") in ENDED_STEP_STATES for i in step_ids)


def describe_steps(emr, cluster_id: str, step_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """id -> Step of this range's steps (``list_steps`` pages: one call per 50 steps, not one per step)."""
    wanted = set(step_ids)
    found: dict[str, dict[str, Any]] = {}
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        for step in page.get("Steps", []):
            if step["Id"] in wanted:
                found[step["Id"]] = step
    return found
