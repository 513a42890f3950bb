"""What a succeeded EMR run tells the rest of the platform: its asset events (one per day processed, from
the day's report.json) and, if it rejected too many files, an alert; and where its report is."""

from __future__ import annotations

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
    folder = Layout(run.output_prefix, run.dt).report_folders()[1]
    report = cost_report.report_of_run(s3, run.bucket, folder, run.dt, summary["created"])
    if report is None:  # steps marked successful by hand, or a report lost: nothing proves the day's data
        print(f"{folder}/report.json of dt={run.dt} is not this run's: no asset event")
        return []
    announced = assets.emit(context["outlet_events"], run.output_uri, [report])
    for partition in announced:
        print(f"asset event: {partition}")
    reason = alerts.too_many_rejections(report["counts"])
    if reason:
        text = alerts.message(
            context["run_id"], context["dag"].dag_id, reason, summary, {"report": report_url(run)}
        )
        alerts.FruitsSnsNotifier(aws_conn_id=aws_conn_id, message=text, subject=f"[fruits] {reason}"[:100])(
            context
        )
    return announced
