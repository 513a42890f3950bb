"""What a succeeded EMR run tells the rest of the platform: its asset events (one per day processed, from
the day's report.json) and, if it rejected too many files, an alert; and where its report is."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from fruits_platform import assets, links
from fruits_platform.aws import alerts, cost_report
from fruits_platform.aws.settings import RunSettings
from fruits_spark.layout import REPORT_HTML, Layout


def report_url(run: RunSettings) -> str:
    """The S3 console page of the day's report.html."""
    return links.report_url(Layout(run.output_uri, run.dt).report(REPORT_HTML), run.region)


def publish_run(context, run: RunSettings, summary: dict, s3, aws_conn_id: str) -> list[str]:
    """The Report link's address; if the run succeeded, the day's asset events (the running task's alias
    outlets) and an alert on too many rejections. Returns the partitions announced."""
    context["ti"].xcom_push(key=links.REPORT_URL_KEY, value=report_url(run))
    if not summary["succeeded"]:
        return []
    announced, reports = announce_days(context, run, [run.dt], summary["created"], s3)
    if not reports:
        return []
    reason = alerts.too_many_rejections(reports[0]["counts"])
    if reason:
        text = alerts.message(
            context["run_id"], context["dag"].dag_id, reason, summary, {"report": report_url(run)}
        )
        alerts.FruitsSnsNotifier(aws_conn_id=aws_conn_id, message=text, subject=f"[fruits] {reason}"[:100])(
            context
        )
    return announced


def announce_days(
    context, run: RunSettings, days: Sequence[str], written_after: dt.datetime, s3
) -> tuple[list[str], list[dict]]:
    """The asset events of ``days`` (days whose steps succeeded), one per dataset and day, from each day's
    report.json written after ``written_after`` (the cluster's creation). A day whose report is not this
    run's (steps marked successful by hand, a report lost) gets none: nothing proves its data.
    Returns (the partitions announced, the reports they came from)."""
    reports = []
    for day in days:
        folder = Layout(run.output_prefix, day).report_folders()[1]
        report = cost_report.report_of_run(s3, run.bucket, folder, day, written_after)
        if report is None:
            print(f"{folder}/report.json of dt={day} is not this run's: no asset event")
        else:
            reports.append(report)
    announced = assets.emit(context["outlet_events"], run.output_uri, reports)
    for partition in announced:
        print(f"asset event: {partition}")
    return announced, reports
