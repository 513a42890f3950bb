"""One cluster for a range of upload days: the DAG ``fruits_features_emr_backfill``.

Airflow's own backfill makes one run, hence one cluster and one start-up, per day. Here the days of a range
are steps of one cluster: each day's ingest, features and pca, in day order, each day reading its own
``uploads/dt=D/`` and writing its own ``dt=D`` partitions, exactly as that day's daily run would. A failing
step does not end the cluster (ActionOnFailure CONTINUE): the days after it still run and the days before
it are already written; the day is reported with its step, reason and log.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.emr import EmrHook
from airflow.sdk import BaseSensorOperator

from fruits_platform.aws import cluster, cost, cost_report, staging
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.settings import RunSettings, uploads_prefix
from fruits_platform.aws.staging import StagedArtifacts
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
        raise GuardRefused(
            f"params from_dt and to_dt must be dates YYYY-MM-DD, got {from_dt!r} and {to_dt!r}"
        ) from None
    count = (last - first).days + 1
    if count < 1:
        raise GuardRefused(f"to_dt {to_dt} is before from_dt {from_dt}")
    if count > MAX_RANGE_DAYS:
        raise GuardRefused(
            f"{count} days from {from_dt} to {to_dt}: at most {MAX_RANGE_DAYS} on one cluster; "
            "split the range"
        )
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def day_pipeline(pipeline: Mapping[str, Any], bucket: str, day: str) -> PipelineParams:
    """The run's pipeline params for one day of the range: that day's uploads, that day's partitions."""
    return PipelineParams(**{**pipeline, "input": staging.s3_uri(bucket, uploads_prefix(day)), "dt": day})


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


# -- what the DAG's tasks call -------------------------------------------------------------------------------
def count_day(s3, bucket: str, day: str) -> tuple[int, int]:
    """(images, their bytes) a day of the range would featurise (its uploads), from the S3 listing."""
    _, images, image_bytes = staging.count_images(s3, bucket, uploads_prefix(day))
    return images, image_bytes


def estimate_range(
    run: RunSettings, table: Mapping[str, Any], uploads_per_day: Mapping[str, tuple[int, int]]
):
    """The cost bound of the whole range on one cluster: one start-up, every day's step limits, one idle
    timeout and termination (``cost.estimate_worst_case`` over each day's images and bytes)."""
    sizing = cluster.executor_sizing(table, run.instance_type, run.core_nodes, run.pipeline["engine"])
    return cost.estimate_worst_case(
        dict(table),
        instance_type=run.instance_type,
        core_nodes=run.core_nodes,
        use_spot=run.use_spot,
        images=[images for images, _ in uploads_per_day.values()],
        image_bytes=[image_bytes for _, image_bytes in uploads_per_day.values()],
        idle_timeout_seconds=cluster.IDLE_TIMEOUT_SECONDS,
        budget_eur=run.budget_eur,
        ebs_gib_per_instance=cluster.EBS_GIB_PER_INSTANCE,
        executor_cores=sizing.total_executor_cores,
    )


def day_limits(estimate, days: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each day's step limits, as the estimate bounded them (days in the estimate's order)."""
    return dict(zip(days, estimate.day_step_limits, strict=True))


def watch_timeout(estimate) -> int:
    """watch_days' timeout: the start-up limit and every step within its limit (+ slack), as bounded."""
    return round((estimate.startup_hours + estimate.run_hours) * 3600)


def range_steps(
    run: RunSettings, artifacts: StagedArtifacts, days: Sequence[str], limits: Mapping[str, Mapping[str, int]]
) -> list[dict[str, Any]]:
    """Every day's EMR steps over the staged code and weights, in ``step_plan`` order; a failing step lets
    the cluster go on with the next (CONTINUE), and is named after its day."""
    staged = {"weights": artifacts.weights_uri, "engine_artifact": artifacts.engine_artifact_uri}
    steps = []
    for day in days:
        pipeline = day_pipeline({**run.pipeline, **staged}, run.bucket, day)
        steps += cluster.emr_steps(
            pipeline,
            artifacts.artifacts_uri,
            limits[day],
            action_on_failure="CONTINUE",
            name_suffix=f" dt={day}",
        )
    return steps


def step_id_list(step_ids: Any) -> list[str]:
    """EmrAddStepsOperator's XCom, a list (or its repr when rendered into a template field)."""
    return ast.literal_eval(step_ids) if isinstance(step_ids, str) else list(step_ids)


class RangeStepsSensor(BaseSensorOperator):
    """Waits until every step of the range has ended (or the cluster has): their outcome is report_range's.
    ``timeout_seconds`` comes from the cost guard, at run time."""

    template_fields: Sequence[str] = ("job_flow_id", "step_ids", "timeout_seconds", "region_name")

    def __init__(
        self,
        *,
        job_flow_id: Any,
        step_ids: Any,
        timeout_seconds: Any,
        aws_conn_id: str,
        region_name: str,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.job_flow_id = job_flow_id
        self.step_ids = step_ids
        self.timeout_seconds = timeout_seconds
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def execute(self, context) -> Any:
        self.timeout = float(self.timeout_seconds)
        return super().execute(context)

    @cached_property
    def emr(self):
        # one client for all pokes: each new hook is a new boto3 session, which reads botocore's data again
        return EmrHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn

    def poke(self, context) -> bool:
        emr = self.emr
        ids = step_id_list(self.step_ids)
        steps = describe_steps(emr, self.job_flow_id, ids)
        ended = [i for i in ids if (steps.get(i) or {}).get("Status", {}).get("State") in ENDED_STEP_STATES]
        self.log.info("%d of %d steps ended on cluster %s", len(ended), len(ids), self.job_flow_id)
        if len(ended) == len(ids):
            return True
        state = emr.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]["Status"]["State"]
        if state not in cluster.ACTIVE_CLUSTER_STATES:
            self.log.warning("cluster %s is %s: its remaining steps will not run", self.job_flow_id, state)
            return True
        return False


def summarize_range(
    emr, run: RunSettings, days: Sequence[str], estimate: Mapping, cluster_id: str, step_ids: Any, poke: float
) -> dict[str, Any]:
    """The range's summary: each day's outcome from its steps, the cluster's hours priced as estimated."""
    ended = cost_report.wait_for_termination(emr, cluster_id, poke)
    ids = step_id_list(step_ids)
    outcomes = day_outcomes(days, ids, describe_steps(emr, cluster_id, ids))
    timeline = ended["Status"].get("Timeline", {})
    finished = timeline.get("EndDateTime") or dt.datetime.now(dt.UTC)
    hours, euros = cost.actual_cost_eur(
        estimate["expected_hourly_eur"], timeline["CreationDateTime"], finished
    )
    return {
        "from_dt": days[0],
        "to_dt": days[-1],
        "output": run.output_uri,
        "cluster_id": cluster_id,
        "cluster_state": ended["Status"]["State"],
        "created": timeline["CreationDateTime"],  # a day's report.json written after it is this run's
        "days": outcomes,
        "cost": {
            "cluster_hours": hours,
            "estimated_cost_eur": euros,
            "estimated_worst_case_eur": estimate["worst_case_eur"],
            "budget_eur": estimate["budget_eur"],
        },
    }


def publish_range(s3, run: RunSettings, summary: Mapping[str, Any]) -> str:
    """The summary next to the daily reports, under ``reports/range=<from>_<to>/``; returns its key."""
    key = f"{run.output_prefix}reports/range={summary['from_dt']}_{summary['to_dt']}/summary.json"
    s3.put_object(
        Bucket=run.bucket,
        Key=key,
        Body=json.dumps(summary, indent=2, default=str).encode(),
        ServerSideEncryption=staging.SSE_ALGORITHM,
    )
    return key


def completed_days(summary: Mapping[str, Any]) -> list[str]:
    return [day for day, outcome in summary["days"].items() if outcome["state"] == "COMPLETED"]


def outcome_text(outcome: Mapping[str, Any]) -> str:
    if outcome["state"] == "COMPLETED":
        return "done"
    log = f"; log: {outcome['log']}" if outcome.get("log") else ""
    return f"{outcome['step']} {outcome['state']}: {outcome['reason']}{log}"


def failure_text(summary: Mapping[str, Any], failed: Sequence[str]) -> str:
    done = len(summary["days"]) - len(failed)
    if summary["cluster_state"] in cluster.ACTIVE_CLUSTER_STATES:
        return (
            f"cluster {summary['cluster_id']} is still {summary['cluster_state']} after terminate_cluster: "
            f"terminate it (aws emr terminate-clusters --cluster-ids {summary['cluster_id']})"
        )
    return (
        f"{len(failed)} of {len(summary['days'])} days failed ({', '.join(failed)}); the {done} other days "
        f"are written. Rerun the failed days: from_dt/to_dt, or the daily DAG for one day"
    )
