"""The api-server's page of a local report: the run's report.html, and nothing else on the disk."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from fruits_platform.links import report_url
from fruits_platform.local.report_server import ROUTE, app


@pytest.fixture
def client() -> TestClient:
    return TestClient(app)


def test_the_report_link_of_a_local_run_serves_its_report(client, tmp_path):
    report = tmp_path / "out" / "reports" / "dt=2026-11-05" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<h1>run of 2026-11-05</h1>")

    link = report_url(str(report))
    assert link.startswith(f"{ROUTE}/?path=")
    response = client.get(link.removeprefix(ROUTE))
    assert response.status_code == 200
    assert "run of 2026-11-05" in response.text


@pytest.mark.parametrize(
    "relative",
    ["out/reports/dt=2026-11-05/report.json", "out/secret/report.html", "out/reports/dt=x/report.html"],
)
def test_nothing_but_a_run_report_is_served(client, tmp_path, relative):
    target = tmp_path / relative
    target.parent.mkdir(parents=True)
    target.write_text("not for the browser")
    assert client.get(f"/?path={quote(str(target))}").status_code == 404
    # nor through a path that climbs out of a report folder
    climbing = tmp_path / "out" / "reports" / "dt=2026-11-05" / ".." / ".." / "secret" / "report.html"
    assert client.get(f"/?path={quote(str(climbing))}").status_code == 404
