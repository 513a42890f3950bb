"""The EMR run's summary once its cluster ended: the outcome, the cluster's hours priced like the estimate,
and the cost added to the run report the pca step wrote to S3.

Only Airflow knows what the cluster cost, and only after it ended: the report is re-rendered then (with
``fruits_spark.report``, its one renderer), with the plots the job already wrote, so that one page holds
the counts, the PCA and the cost.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence

from botocore.exceptions import ClientError

from fruits_platform.aws import cluster as cluster_spec
from fruits_platform.aws.cost import actual_cost_eur
from fruits_platform.aws.settings import RunSettings
from fruits_platform.aws.staging import SSE_ALGORITHM
from fruits_spark.contract import STEP_NAMES
from fruits_spark.layout import REPORT_JSON, Layout
from fruits_spark.report import PLOTS, plot_file, report_files

CONTENT_TYPES = {".json": "application/json", ".html": "text/html"}


def watcher_id(step: str) -> str:
    """The task id of the sensor that watches ``step``."""
    return f"watch_{step}"


def watchers() -> list[str]:
    """The step sensors' task ids: their states decide whether the run succeeded."""
    return [watcher_id(name) for name in STEP_NAMES]


def wait_for_termination(client, cluster_id: str, poke_seconds: float, attempts: int = 20) -> dict:
    """The cluster once terminated (its timeline then has an EndDateTime), or as it is if that is not coming:
    still active a few polls after terminate_cluster, the termination never took effect."""
    for attempt in range(attempts):
        cluster = client.describe_cluster(ClusterId=cluster_id)["Cluster"]
        state = cluster["Status"]["State"]
        if state in cluster_spec.ENDED_CLUSTER_STATES or (
            state in cluster_spec.ACTIVE_CLUSTER_STATES and attempt >= 2
        ):
            return cluster
        time.sleep(min(poke_seconds, 30))
    return cluster


def run_outcome(
    states: Mapping[str, str | None], watchers: Sequence[str], failures: Sequence[dict | None]
) -> tuple[bool, dict | None]:
    """(succeeded, failure) of a run from its watch_<step> task states, the only complete record.

    The sensors' ``failure`` XCom explains a failed step, but a sensor that timed out, a trigger that timed
    out or a task marked failed by hand pushes none: success is every watcher in state success."""
    reported = [failure for failure in failures if failure]
    not_done = [(task, states.get(task)) for task in watchers if states.get(task) != "success"]
    if not not_done:
        return True, None
    if reported:
        return False, reported[0]
    task, state = not_done[0]
    return False, {
        "step": task.removeprefix("watch_"),
        "state": state,
        "reason": f"{task} ended {state} without a step failure (sensor/trigger timeout, marked by hand)",
        "log": None,
        "message": f"{task} {state}: the step did not succeed (sensor or trigger timeout, or marked by hand)",
    }


def report_of_run(s3, bucket: str, folder: str, upload_day: str, written_after: dt.datetime) -> dict | None:
    """``folder``/report.json if the Spark job of this run wrote it: its dt is the run's and it was written
    after the run's cluster was created. Otherwise None: it belongs to another run (or none exists)."""
    try:
        found = s3.get_object(Bucket=bucket, Key=f"{folder}/{REPORT_JSON}")
    except s3.exceptions.NoSuchKey:
        return None
    report = json.loads(found["Body"].read())
    # S3 keeps LastModified to the second
    if report.get("dt") != upload_day or found["LastModified"] < written_after.replace(microsecond=0):
        return None
    return report


def add_cost_to_report(s3, bucket: str, folder: str, cost: dict, report: dict) -> dict:
    """Rewrites ``folder``/report.json and report.html, ``report`` (from ``report_of_run``) with ``cost``."""
    report = {**report, "cost": cost}
    plots = {
        name: s3.get_object(Bucket=bucket, Key=f"{folder}/{plot_file(name)}")["Body"].read() for name in PLOTS
    }
    for name, body in report_files(report, plots).items():
        s3.put_object(
            Bucket=bucket,
            Key=f"{folder}/{name}",
            Body=body,
            ContentType=CONTENT_TYPES[name[name.rindex(".") :]],
            ServerSideEncryption=SSE_ALGORITHM,
        )
    return report


def summarize_run(
    run: RunSettings,
    estimate: dict,
    cluster_id: str,
    cluster: dict,
    states: Mapping[str, str | None],
    failures: Sequence[dict | None],
) -> dict:
    """The run summary (cost.json, the report_cost XCom) from the terminated cluster and its watchers."""
    timeline = cluster["Status"].get("Timeline", {})
    ended = timeline.get("EndDateTime") or dt.datetime.now(dt.UTC)
    # priced at the expected rate (typical Spot price): the bound's caps would overstate a Spot run
    hours, cost = actual_cost_eur(estimate["expected_hourly_eur"], timeline["CreationDateTime"], ended)
    succeeded, failure = run_outcome(states, watchers(), failures)
    choice = estimate.get("cluster_choice")
    return {
        "dt": run.dt,
        "input": run.input_uri,
        "output": run.output_uri,
        "cluster_id": cluster_id,
        "cluster_state": cluster["Status"]["State"],
        "created": timeline["CreationDateTime"],
        "succeeded": succeeded,
        "failure": failure,
        "steps": dict(states),
        "cost": {
            "cluster_hours": hours,
            "normalized_instance_hours": cluster.get("NormalizedInstanceHours"),
            "estimated_cost_eur": cost,
            "hourly_eur": estimate["expected_hourly_eur"],
            "bound_hourly_eur": estimate["hourly_eur"],
            "estimated_worst_case_eur": estimate["worst_case_eur"],
            "budget_eur": estimate["budget_eur"],
            "prices_as_of": estimate["prices_as_of"],
            # what check_budget chose and why (one line each: the report's cost table shows them)
            **(choice_fields(choice) if choice else {}),
        },
        # the whole comparison (cost.json and the XCom): every kind's best shape with its cost
        "cluster_choice": choice,
    }


def choice_fields(choice: Mapping) -> dict[str, str]:
    """The cluster choice (``shapes.Choice.as_dict``) as the report's one-line fields."""
    alternatives = "; ".join(
        f"{option['label']}: {option['expected_eur']:.2f} EUR, outputs in {option['finish_hours']:.2f} h"
        + ("" if option["meets_deadline"] else ", after the deadline")
        for option in choice["alternatives"]
    )
    return {
        "cluster": choice["label"],
        "cluster_expected_eur": f"{choice['expected_eur']:.2f}",
        "cluster_chosen_because": choice["reason"],
        "cluster_alternatives": alternatives or "none",
    }


def publish(s3, run: RunSettings, summary: dict) -> None:
    """cost.json beside the date's report; on success, the cost into the latest and the dated report."""
    layout = Layout(run.output_prefix, run.dt)
    folders = layout.report_folders()
    try:
        # the latest-run copy and the dated copy both get the cost, each only if this run wrote it
        for folder in folders if summary["succeeded"] else ():
            report = report_of_run(s3, run.bucket, folder, run.dt, summary["created"])
            if report is None:
                print(f"{folder}/{REPORT_JSON} is not this run's: no cost written into it")
                continue
            summary["counts"] = add_cost_to_report(s3, run.bucket, folder, summary["cost"], report).get(
                "counts"
            )
        s3.put_object(
            Bucket=run.bucket,
            Key=f"{folders[1]}/cost.json",
            Body=json.dumps(summary, indent=2, default=str).encode(),
            ServerSideEncryption=SSE_ALGORITHM,
        )
    except (ClientError, ValueError) as error:
        print(f"report.json not read or cost.json not written under {folders[1]}/: {error}")


def outcome_line(summary: dict, estimate: dict) -> str:
    cost = summary["cost"]
    outcome = "steps succeeded" if summary["succeeded"] else "FAILED: " + summary["failure"]["message"]
    chosen = f" ({cost['cluster']}: {cost['cluster_chosen_because']})" if "cluster" in cost else ""
    return (
        f"run summary: {outcome}; cluster {summary['cluster_id']}{chosen} {summary['cluster_state']} after "
        f"{cost['cluster_hours']:.2f} h, ~{cost['estimated_cost_eur']:.2f} EUR (bound "
        f"{estimate['worst_case_eur']:.2f}, budget {estimate['budget_eur']:g}), "
        f"NormalizedInstanceHours {cost['normalized_instance_hours']}"
    )
