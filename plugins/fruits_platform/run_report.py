"""Adds the cluster's cost to the run report the Spark job wrote to S3 (report.json and report.html).

Only Airflow knows what the cluster cost, and only after it ended: the report is re-rendered then, with the
plots the job already wrote, so that one page holds the counts, the PCA and the cost.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence

from fruits_platform.staging import SSE_ALGORITHM
from fruits_spark.report import PLOTS, render_html


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
    """``folder``report.json if the Spark job of this run wrote it: its dt is the run's and it was written
    after the run's cluster was created. Otherwise None: it belongs to another run (or none exists)."""
    try:
        found = s3.get_object(Bucket=bucket, Key=folder + "report.json")
    except s3.exceptions.NoSuchKey:
        return None
    report = json.loads(found["Body"].read())
    # S3 keeps LastModified to the second
    if report.get("dt") != upload_day or found["LastModified"] < written_after.replace(microsecond=0):
        return None
    return report


def add_cost_to_report(s3, bucket: str, folder: str, cost: dict, report: dict) -> dict:
    """Rewrites ``folder``report.json/.html, ``report`` (from ``report_of_run``) with ``cost``."""
    report = {**report, "cost": cost}
    plots = {
        name: s3.get_object(Bucket=bucket, Key=f"{folder}report_{name}.png")["Body"].read() for name in PLOTS
    }
    for name, body, content_type in (
        ("report.json", json.dumps(report, indent=2).encode(), "application/json"),
        ("report.html", render_html(report, plots).encode(), "text/html"),
    ):
        s3.put_object(
            Bucket=bucket,
            Key=folder + name,
            Body=body,
            ContentType=content_type,
            ServerSideEncryption=SSE_ALGORITHM,
        )
    return report
