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

from botocore.exceptions import ClientError

from fruits_platform.aws import emr, guards
from fruits_platform.aws.settings import RunSettings
from fruits_platform.aws.staging import SSE_ALGORITHM
from fruits_spark.layout import REPORT_JSON, Layout
from fruits_spark.report import PLOTS, plot_file, report_files

CONTENT_TYPES = {".json": "application/json", ".html": "text/html"}


def wait_for_termination(client, cluster_id: str, poke_seconds: float, attempts: int = 20) -> dict:
    """The cluster once terminated (its timeline then has an EndDateTime), or as it is if that is not coming:
    still active a few polls after terminate_cluster, the termination never took effect."""
    for attempt in range(attempts):
        cluster = client.describe_cluster(ClusterId=cluster_id)["Cluster"]
        state = cluster["Status"]["State"]
        if state in ("TERMINATED", "TERMINATED_WITH_ERRORS") or (
            state in emr.ACTIVE_CLUSTER_STATES and attempt >= 2
        ):
            return cluster
        time.sleep(min(poke_seconds, 30))
    return cluster


def add_cost_to_report(s3, bucket: str, folder: str, cost: dict) -> dict:
    """Rewrites ``folder``/report.json and report.html with ``cost``; returns the updated report."""
    report = json.loads(s3.get_object(Bucket=bucket, Key=f"{folder}/{REPORT_JSON}")["Body"].read())
    report["cost"] = cost
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
    run: RunSettings, estimate: dict, cluster_id: str, cluster: dict, failures: list[dict]
) -> dict:
    """The run summary (cost.json, the report_cost XCom) from the terminated cluster and the step failures."""
    timeline = cluster["Status"].get("Timeline", {})
    ended = timeline.get("EndDateTime") or dt.datetime.now(dt.UTC)
    hours, cost = guards.actual_cost_eur(estimate["hourly_eur"], timeline["CreationDateTime"], ended)
    return {
        "dt": run.dt,
        "input": run.input_uri,
        "output": run.output_uri,
        "cluster_id": cluster_id,
        "cluster_state": cluster["Status"]["State"],
        "succeeded": not failures,
        "failure": failures[0] if failures else None,
        "cost": {
            "cluster_hours": hours,
            "normalized_instance_hours": cluster.get("NormalizedInstanceHours"),
            "estimated_cost_eur": cost,
            "hourly_eur": estimate["hourly_eur"],
            "estimated_worst_case_eur": estimate["worst_case_eur"],
            "budget_eur": estimate["budget_eur"],
            "prices_as_of": estimate["prices_as_of"],
        },
    }


def publish(s3, run: RunSettings, summary: dict) -> None:
    """cost.json beside the date's report; on success, the cost into the latest and the dated report."""
    layout = Layout(run.output_prefix, run.dt)
    folders = layout.report_folders()
    try:
        if summary["succeeded"]:
            for folder in folders:
                report = add_cost_to_report(s3, run.bucket, folder, summary["cost"])
            summary["counts"] = report.get("counts")
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
    return (
        f"run summary: {outcome}; cluster {summary['cluster_id']} {summary['cluster_state']} after "
        f"{cost['cluster_hours']:.2f} h, ~{cost['estimated_cost_eur']:.2f} EUR (worst case estimate "
        f"{estimate['worst_case_eur']:.2f}, budget {estimate['budget_eur']:g}), "
        f"NormalizedInstanceHours {cost['normalized_instance_hours']}"
    )
