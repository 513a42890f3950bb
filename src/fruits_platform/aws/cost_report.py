"""Adds the cluster's cost to the run report the Spark job wrote to S3 (report.json and report.html).

Only Airflow knows what the cluster cost, and only after it ended: the report is re-rendered then, with the
plots the job already wrote, so that one page holds the counts, the PCA and the cost.
"""

from __future__ import annotations

import json

from fruits_platform.aws.staging import SSE_ALGORITHM
from fruits_spark.report import PLOTS, render_html


def add_cost_to_report(s3, bucket: str, folder: str, cost: dict) -> dict:
    """Rewrites ``folder``report.json/.html with ``cost``; returns the updated report."""
    report = json.loads(s3.get_object(Bucket=bucket, Key=folder + "report.json")["Body"].read())
    report["cost"] = cost
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
