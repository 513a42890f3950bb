"""The run's report one click away in the Airflow UI: an extra link ("Report") on the task that publishes it.

Airflow 3 computes a task's extra links when the task ends (in the worker) and keeps them as XComs, which the
UI reads: the task pushes the report's address under ``REPORT_URL_KEY`` and the link returns it. Locally the
address is the api-server's page of the report (``fruits_platform.local.report_server``), on EMR the S3
console page of ``report.html``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

REPORT_URL_KEY = "report_url"


class ReportLink(BaseOperatorLink):
    name = "Report"

    def get_link(self, operator, *, ti_key) -> str:
        return XCom.get_value(key=REPORT_URL_KEY, ti_key=ti_key) or ""


def with_report_link(output):
    """``output`` (a @task's call) with the Report link on its task; the task pushes REPORT_URL_KEY."""
    output.operator.operator_extra_links = (ReportLink(),)
    return output


def report_url(report: str, region: str | None = None) -> str:
    """The address a browser opens: s3://bucket/key as its S3 console page, a local path as the
    api-server's page of it (the UI shows no file:// link)."""
    if report.startswith("s3://"):
        bucket, _, key = report.removeprefix("s3://").partition("/")
        return (
            f"https://{region}.console.aws.amazon.com/s3/object/{bucket}"
            f"?region={region}&bucketType=general&prefix={quote(key)}"
        )
    if "://" in report:
        return report
    return local_report_link(report)


# where the api-server's plugin (fruits_platform.local.report_server) serves the local runs' reports
REPORT_ROUTE = "/fruits-reports"


def local_report_link(report: str) -> str:
    """The UI link of a local report.html."""
    return f"{REPORT_ROUTE}/?path={quote(str(Path(report).resolve()))}"
