"""Airflow plugin: the api-server serves the local runs' reports (fruits_features_local's "Report" link)."""

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from fruits_platform.local.report_server import ROUTE, app


class FruitsReportsPlugin(AirflowPlugin):
    name = "fruits_reports"
    fastapi_apps: ClassVar[list[dict]] = [{"app": app, "url_prefix": ROUTE, "name": "Fruits! run reports"}]
