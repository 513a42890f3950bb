"""The local runs' reports, served by the Airflow api-server (plugin ``plugins/fruits_reports.py``).

The UI's "Report" extra link cannot point at ``file://``: the UI drops links that are not http(s) or of its
own origin, and browsers do not follow file links from a web page. So the link is a path of the api-server,
``/fruits-reports/?path=<report.html>``, and this app returns the file. It serves only files named
``report.html`` in a ``reports/dt=YYYY-MM-DD/`` folder (what a run writes), nothing else on the disk.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

from fruits_platform.links import REPORT_ROUTE as ROUTE
from fruits_platform.links import local_report_link as link
from fruits_spark.layout import REPORT_HTML

__all__ = ["ROUTE", "app", "link", "servable"]
_DAY_FOLDER = re.compile(r"dt=\d{4}-\d{2}-\d{2}")

app = FastAPI(title="Fruits! run reports")


def servable(report: Path) -> bool:
    folder = report.parent
    return (
        report.name == REPORT_HTML
        and bool(_DAY_FOLDER.fullmatch(folder.name))
        and folder.parent.name == "reports"
        and report.is_file()
    )


@app.get("/")
def report(path: str) -> FileResponse:
    candidate = Path(path).resolve()
    if not servable(candidate):
        raise HTTPException(
            status_code=404, detail="not a run report (<output>/reports/dt=<day>/report.html)"
        )
    return FileResponse(candidate, media_type="text/html")
