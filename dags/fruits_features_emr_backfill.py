"""
### fruits_features_emr_backfill: a range of upload days on one transient EMR cluster

`airflow backfill create` over N days makes N runs of `fruits_features_emr`: N clusters, N start-ups. This
DAG runs the days `from_dt` .. `to_dt` (at most 31) as steps of **one** cluster: each day's ingest, features
and pca, day after day, each day reading `uploads/dt=D/` and writing its own `dt=D` partitions exactly as
its daily run would. A failing step does not end the cluster: the other days still run, the days before it
stay written, and the failed day is reported (its step, reason and log) and fails the run at the end.
Manual runs only. When to use it rather than Airflow's backfill: `docs/AWS.md`, *Schedule and backfill*.

| task | what it does |
| --- | --- |
| `resolve_range` | the days, then the params and Variables once, as `fruits_features_emr` reads them |
| `check_gdpr` | the same placement guard as the daily DAG |
| `check_budget` | counts each day's images, bounds the cost of the whole range, refuses > `budget_eur` |
| `stage_artifacts` | the same artifacts as the daily DAG |
| `cluster_spec` | one cluster definition, every day's steps (ActionOnFailure CONTINUE) |
| `take_lease` | the lease of every day of the range, all or none: a day another run holds fails this one |
| `create_cluster`, `add_steps` | as in the daily DAG |
| `watch_days` | waits until every step has ended |
| `terminate_cluster` | teardown: always terminates the cluster |
| `report_range` | teardown: each day's outcome, the cluster's hours and cost; asset events of the days done |
| `release_lease` | teardown: gives the days back, even if the run failed (not while its cluster still runs) |
| `check_days` | fails the run if a day failed (after report_range, whose asset events a failure would drop) |
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, chain, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from fruits_platform import assets
from fruits_platform.aws import backfill, cluster, cost, pricing, shapes, staging
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.run_outputs import announce_days
from fruits_platform.aws.settings import RunSettings, resolve_settings
from fruits_platform.aws.tasks import (
    REGION,
    aws_client,
    check_placement,
    cluster_tasks,
    lease_tasks,
    poke_seconds,
    sensor_mode,
    stage_run,
    variables,
)
from fruits_platform.dag_params import RANGE_PARAMS, emr_params

DAG_ID = "fruits_features_emr_backfill"
AWS_CONN_ID: str = cluster.AWS_CONN_ID
POKE_SECONDS: float = poke_seconds()

with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params={**RANGE_PARAMS, **emr_params()},
    doc_md=__doc__,
    tags=["fruits", "emr", "backfill"],
    default_args={"owner": "fruits", "retries": 0},
) as dag:

    @task
    def resolve_range() -> dict:
        """The days of the range, and the run's settings (the first day's, as the daily DAG reads them)."""
        params = get_current_context()["params"]
        try:
            days = backfill.days_in_range(params["from_dt"], params["to_dt"])
            run = resolve_settings(params, days[0], variables())
        except GuardRefused as refusal:
            raise AirflowFailException(str(refusal)) from None
        print(f"{len(days)} days {days[0]} .. {days[-1]} -> {run.output_uri}, one cluster")
        return {**run.as_dict(), "days": days}

    @task
    def check_gdpr(settings: dict) -> str:
        return check_placement(RunSettings.from_dict(settings))

    @task(multiple_outputs=True)
    def check_budget(settings: dict) -> dict:
        """Cost guard over the whole range: each day's step limits from its own image count."""
        run = RunSettings.from_dict(settings)
        s3 = aws_client("s3", run.region)
        counts = {day: backfill.count_day(s3, run.bucket, day) for day in settings["days"]}
        days = [day for day, (images, _) in counts.items() if images]
        if not days:
            raise AirflowSkipException(f"no images in any day of {settings['days'][0]}..: no cluster")
        try:
            table = pricing.load_price_table(run.price_table)
            # one shape for the whole range: its total, each day's steps, the range's deadline (aws.shapes)
            choice = shapes.choose_for_run(
                run,
                table,
                [counts[day][0] for day in days],
                [counts[day][1] for day in days],
                shapes.RANGE_DEADLINE_SECONDS,
            )
            estimate = backfill.estimate_range(
                shapes.resolved(run, choice.shape), table, {day: counts[day] for day in days}
            )
            print(f"images per day {counts}; {choice.summary()}")
            print(estimate.summary())
            cost.check_budget(estimate)
        except (GuardRefused, pricing.PriceTableError, ValueError) as refusal:
            raise AirflowFailException(str(refusal)) from None
        return {
            "days": days,
            "estimate": {**estimate.as_dict(), "cluster_choice": choice.as_dict()},
            "shape": choice.shape.as_dict(),
            "day_limits": backfill.day_limits(estimate, days),
            "timeout_seconds": backfill.watch_timeout(estimate),
        }

    @task(retries=2, retry_delay=dt.timedelta(seconds=30))
    def stage_artifacts(settings: dict, shape: dict) -> dict:
        return stage_run(shapes.resolved(RunSettings.from_dict(settings), shape))

    @task(multiple_outputs=True)
    def cluster_spec(settings: dict, staged: dict, days: list, day_limits: dict, shape: dict) -> dict:
        run = shapes.resolved(RunSettings.from_dict(settings), shape)  # the shape check_budget chose
        artifacts = staging.StagedArtifacts(**staged)
        table = pricing.load_price_table(run.price_table)
        return {
            "job_flow_overrides": cluster.cluster_definition(
                run, artifacts, table, DAG_ID, get_current_context()["run_id"]
            ),
            "steps": backfill.range_steps(run, artifacts, days, day_limits),
        }

    @task(outlets=[assets.FEATURES, assets.PCA])
    def report_range(settings: dict, days: list, estimate: dict, cluster_id: str, step_ids: list) -> dict:
        """Each day's outcome and the cluster's cost; one features and one pca asset event per day done.
        It succeeds even if a day failed: Airflow drops the asset events of a failed task, and the days
        done must still be announced. check_days fails the run afterwards."""
        run = RunSettings.from_dict(settings)
        emr, s3 = aws_client("emr", run.region), aws_client("s3", run.region)
        summary = backfill.summarize_range(emr, run, days, estimate, cluster_id, step_ids, POKE_SECONDS)
        backfill.publish_range(s3, run, summary)
        for day, outcome in summary["days"].items():
            print(f"dt={day}: {backfill.outcome_text(outcome)}")
        context = get_current_context()
        announce_days(context, run, backfill.completed_days(summary), summary["created"], s3)
        return summary

    @task
    def check_days(summary: dict) -> None:
        """Fails the run if a day failed or the cluster was left running, once report_range has said so."""
        done = backfill.completed_days(summary)
        failed = [day for day in summary["days"] if day not in done]
        if failed or summary["cluster_state"] in cluster.ACTIVE_CLUSTER_STATES:
            raise AirflowFailException(backfill.failure_text(summary, failed))

    settings = resolve_range()
    placement = check_gdpr(settings)
    plan = check_budget(settings)
    staged = stage_artifacts(settings, plan["shape"])
    spec = cluster_spec(settings, staged, plan["days"], plan["day_limits"], plan["shape"])
    # as in the daily DAG: just before the cluster, one lease per day it writes, expiring after its life
    take_lease, release_lease = lease_tasks(settings, plan["estimate"], plan["days"])

    create_cluster, add_steps, terminate_cluster = cluster_tasks(spec)
    watch_days = backfill.RangeStepsSensor(
        task_id="watch_days",
        job_flow_id=create_cluster.output,
        step_ids=add_steps.output,
        timeout_seconds=plan["timeout_seconds"],
        poke_interval=POKE_SECONDS,
        mode=sensor_mode(POKE_SECONDS),
        aws_conn_id=AWS_CONN_ID,
        region_name=REGION,
    )
    summary = report_range(settings, plan["days"], plan["estimate"], create_cluster.output, add_steps.output)

    chain(
        settings,
        placement,
        plan,
        staged,
        spec,
        take_lease,
        create_cluster,
        add_steps,
        watch_days,
        terminate_cluster.as_teardown(setups=create_cluster),
        summary.as_teardown(setups=create_cluster, on_failure_fail_dagrun=True),
        release_lease.as_teardown(setups=take_lease, on_failure_fail_dagrun=True),
        check_days(summary),
    )
