"""The local Airflow stack, driven like a person would: log in, unpause, trigger with the form, wait.

Starts `python -m fruits_platform.local.airflow_server` (what `make airflow` runs) on a free loopback port
with a fresh AIRFLOW_HOME, opens the UI in headless Chromium (Debian's /usr/bin/chromium through
Playwright), triggers `fruits_features_local` on a copy of 8 sample images, waits for the run page to say
Success, then checks the outputs on disk and that the run's page reaches its report ("Report" link).
Then unpauses `fruits_features_emr` and triggers it from its form with `bucket` and `input` left empty:
the run takes the Variable's bucket and the day of the form's logical date (today), and unpausing started no
second run. Both DAGs are unpaused with their page's toggle, and the test waits for the API to say so: a
paused DAG's runs stay queued, and the form's "unpause on trigger" is a request of its own, sent beside the
trigger's.
Screenshots go to test-artifacts/browser/, the stack's logs too.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from fruits_platform.local.airflow_server import LocalAirflow, free_ports, wait_healthy
from fruits_platform.local.processes import stop_processes
from fruits_spark.contract import QUALITY
from tests.corpus import copy_sample
from tests.dags import PARSE_ONCE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
DAG_ID = "fruits_features_local"
EMR_DAG_ID = "fruits_features_emr"
# the Variables the EMR DAG reads (what docs/AWS.md has set from the stack's outputs); no AWS here: the
# endpoint is a closed port, so the run stops at its first AWS call, after resolve_run
EMR_VARIABLES = {
    "AIRFLOW_VAR_FRUITS_BUCKET": "fruits-ui-test",
    "AIRFLOW_VAR_FRUITS_EMR_SERVICE_ROLE": "fruits-emr-service-eu-west-3",
    "AIRFLOW_VAR_FRUITS_EMR_JOB_FLOW_ROLE": "fruits-emr-node-eu-west-3",
    "AIRFLOW_VAR_FRUITS_EMR_SUBNET_ID": "subnet-0123456789abcdef0",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
    # one attempt: botocore's retries of a refused connection only delay the failure this test waits for
    "AWS_MAX_ATTEMPTS": "1",
}
IMAGES_PER_LABEL = 2
# bounds of the waits below: generous, the machine is shared (2 cores, other test runs)
STACK_READY_SECONDS = 600
DAG_PARSED_SECONDS = 300
RUN_DONE_SECONDS = 15 * 60
UNPAUSE_SECONDS = 60


def local_dag_task_count() -> int:
    from airflow.dag_processing.dagbag import DagBag

    dag_file = Path(__file__).resolve().parents[2] / "dags" / "fruits_features_local.py"
    return len(DagBag(dag_folder=str(dag_file)).dags["fruits_features_local"].tasks)


UI_TIMEOUT_MS = 60_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium) to run the UI test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_dir: Path) -> Path:
    """A copy of a few real images per label of data/sample."""
    return copy_sample(sample_dir, tmp_path_factory.mktemp("images"), IMAGES_PER_LABEL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, artifacts: Path, random_weights: Path):
    """The local stack in a fresh AIRFLOW_HOME on free ports; always stopped, whatever happened."""
    home = tmp_path_factory.mktemp("airflow-home")
    port, worker_log_port, trigger_log_port = free_ports(3)
    local = LocalAirflow(home, port, 2, worker_log_port, trigger_log_port)
    # nothing of this pytest's own Airflow settings (tests/conftest.py) leaks into the stack
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), FRUITS_WEIGHTS=str(random_weights), **EMR_VARIABLES, **PARSE_ONCE)
    command = [
        sys.executable,
        "-m",
        "fruits_platform.local.airflow_server",
        "start",
        "--home",
        str(home),
        "--port",
        str(local.port),
        "--worker-log-port",
        str(local.worker_log_port),
        "--trigger-log-port",
        str(local.trigger_log_port),
    ]
    with (artifacts / "local_airflow.out").open("wb") as out:
        supervisor = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(local.url, STACK_READY_SECONDS, alive=lambda: supervisor.poll() is None)
        yield local
    finally:
        subprocess.run(
            [sys.executable, "-m", "fruits_platform.local.airflow_server", "stop", "--home", str(home)],
            env=env,
            timeout=300,
            check=False,
        )
        if supervisor.poll() is None:  # the stop did not end it: end its whole tree
            stop_processes([psutil.Process(supervisor.pid)], grace=10)
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(timeout=60)
        shutil.copytree(local.log_dir, artifacts / "logs", dirs_exist_ok=True)


@pytest.fixture
def page(artifacts: Path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1800})
            context.set_default_timeout(UI_TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def log_in_if_asked(page, url: str) -> None:
    """SimpleAuthManager's login page, when the UI redirects there."""
    page.goto(url)
    login = page.locator("input[name=username]")
    trigger = page.get_by_test_id("trigger-dag-button")
    login.or_(trigger).first.wait_for()
    if login.is_visible():
        login.fill("admin")
        page.locator("input[name=password]").fill("admin")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda address: address.startswith(url))


def api(stack, path: str) -> dict:
    """GET on the stack's REST API, with a token for the UI's user."""
    login = urllib.request.Request(
        f"{stack.url}/auth/token",
        data=json.dumps({"username": "admin", "password": "admin"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(login, timeout=30) as response:
        token = json.load(response)["access_token"]
    request = urllib.request.Request(
        f"{stack.url}/api/v2{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def run_id_of(run_url: str) -> str:
    """The run id in a run's page address (``.../dags/<dag>/runs/<run id>[/...]``)."""
    return urllib.parse.unquote(run_url.split("/runs/")[1].split("/")[0])


def wait_for_end(stack, page, run_url: str) -> str:
    """The run's state once it ended, as its page shows it; meanwhile the REST API is asked every 5 s, and
    the browser shows a blank page: an open Airflow page polls the api-server and re-renders every few
    seconds, and cost Chromium and the api-server more CPU than the run's tasks."""
    deadline = time.monotonic() + RUN_DONE_SECONDS
    dag_id = run_url.split("/dags/")[1].split("/")[0]
    run_path = f"/dags/{dag_id}/dagRuns/{run_id_of(run_url)}"
    page.goto("about:blank")
    state = api(stack, run_path)["state"]
    while state not in ("success", "failed"):
        # the scheduler never starts a paused DAG's queued run: say so now rather than after the deadline
        assert state != "queued" or not api(stack, f"/dags/{dag_id}")["is_paused"], (
            f"{dag_id} is paused: its run stays queued: {run_url}"
        )
        assert time.monotonic() < deadline, (
            f"the run is still {state!r} after {RUN_DONE_SECONDS} s: {run_url}"
        )
        time.sleep(5)
        state = api(stack, run_path)["state"]
    shown = run_state(page, run_url)
    assert shown == state, f"the API says {state}, the run's page {shown}: {run_url}"
    return shown


def unpause(stack, page, dag_id: str) -> None:
    """The DAG page's toggle, until the API says the DAG is unpaused: the toggle shows its new state before
    the server has stored it, and a request that failed on a busy SQLite would leave the run queued."""
    deadline = time.monotonic() + UNPAUSE_SECONDS
    toggle = page.get_by_test_id("toggle-pause")
    while api(stack, f"/dags/{dag_id}")["is_paused"]:
        assert time.monotonic() < deadline, f"{dag_id} is still paused after {UNPAUSE_SECONDS} s"
        page.reload()
        toggle.wait_for()
        if toggle.get_attribute("data-state") != "checked":
            toggle.click()
        time.sleep(2)
    sync_api.expect(toggle).to_have_attribute("data-state", "checked")


def open_dag(page, url: str) -> None:
    """The DAG's page, reloaded until the dag-processor has parsed the DAG."""
    deadline = time.monotonic() + DAG_PARSED_SECONDS
    log_in_if_asked(page, url)
    trigger = page.get_by_test_id("trigger-dag-button")
    while not _visible(trigger, 10_000):
        assert time.monotonic() < deadline, f"{DAG_ID} not shown by the UI after {DAG_PARSED_SECONDS} s"
        page.reload()


def _visible(locator, timeout_ms: int) -> bool:
    try:
        locator.wait_for(state="visible", timeout=timeout_ms)
        return True
    except sync_api.TimeoutError:
        return False


def run_state(page, run_url: str) -> str:
    page.goto(run_url)
    badge = page.get_by_test_id("header-card").get_by_test_id("state-badge")
    badge.wait_for()
    return badge.inner_text().strip().lower()


@contextlib.contextmanager
def screenshot_on_failure(page, path: Path):
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=path)
        raise


def test_trigger_from_the_ui_runs_the_pipeline(
    stack, page, images: Path, random_weights: Path, tmp_path, artifacts: Path
):
    with screenshot_on_failure(page, artifacts / "zz-failure.png"):
        trigger_and_wait(stack, page, images, random_weights, tmp_path / "out", artifacts)


def trigger_and_wait(stack, page, images: Path, weights: Path, output: Path, artifacts: Path) -> None:
    dag_url = f"{stack.url}/dags/{DAG_ID}"
    open_dag(page, dag_url)

    unpause(stack, page, DAG_ID)
    page.screenshot(path=artifacts / "01-dag-page.png")

    page.get_by_test_id("trigger-dag-button").click()
    form = page.get_by_role("dialog")
    form.locator("#element_input").fill(str(images))
    form.locator("#element_output").fill(str(output))
    form.locator("#element_weights").fill(str(weights))
    # k, by its title: the contract's other steps bring number fields of their own (the quality step's)
    components = form.get_by_role("spinbutton", name="PCA components")
    components.fill("4")
    components.press("Tab")
    sync_api.expect(components).to_have_value("4")
    # the quality step's checks off, as a user turns them off (0), the fields found by their titles: they
    # are not what this run is about, and they are its longest step on 8 photos
    for param in QUALITY.params:
        field = form.get_by_role("spinbutton", name=param.title)
        field.fill("0")
        field.press("Tab")
        sync_api.expect(field).to_have_value("0")
    page.screenshot(path=artifacts / "02-trigger-form.png")
    form.get_by_test_id("trigger-dag-submit").click()

    page.wait_for_url(lambda address: address.startswith(f"{dag_url}/runs/"))
    run_url = page.url
    state = wait_for_end(stack, page, run_url)
    if state != "success":
        page.screenshot(path=artifacts / "03-run-failed.png")
        pytest.fail(f"the run ended {state}: {run_url} (logs: {artifacts / 'logs'})")
    task_states = page.get_by_test_id("table-cell-state")
    # every task of the run succeeded, as many as the DAG file defines
    sync_api.expect(task_states.filter(has_text="Success")).to_have_count(local_dag_task_count())
    page.screenshot(path=artifacts / "03-run-succeeded.png")

    n_images = sum(1 for _ in images.rglob("*.jpg"))
    report = json.loads((output / "report.json").read_text())
    record_run_seconds(stack, run_url, report, n_images, artifacts)
    assert report["counts"]["ok"] == n_images
    csv_files = list((output / "pca_csv").rglob("*.csv"))
    assert csv_files, f"no CSV under {output / 'pca_csv'}"
    rows = [row for path in csv_files for row in csv.DictReader(path.open())]
    assert len(rows) == n_images
    assert "pc_4" in rows[0]
    assert "pc_5" not in rows[0]

    # the report, one click from the run: the "Report" extra link of its summarize task (Details tab),
    # served by the api-server (the UI shows no file:// link)
    page.goto(f"{run_url}/tasks/summarize/details")
    report_link = page.get_by_role("link", name="Report")
    report_link.wait_for()
    page.screenshot(path=artifacts / "04-report-link.png")
    report_html = (output / "reports" / f"dt={today()}" / "report.html").resolve()
    assert (
        report_link.get_attribute("href") == f"/fruits-reports/?path={urllib.parse.quote(str(report_html))}"
    )
    page.goto(f"{stack.url}{report_link.get_attribute('href')}")
    sync_api.expect(page.get_by_text(f"run of {today()}").first).to_be_visible()
    page.screenshot(path=artifacts / "05-report.png", full_page=True)


def record_run_seconds(stack, run_url: str, report: dict, n_images: int, artifacts: Path) -> None:
    """The UI run's duration as Airflow records it, and its steps' seconds: docs/BENCHMARKS.md's figure for
    "a run from the UI" comes from here (a record, not a timed assertion)."""
    run = api(stack, f"/dags/{DAG_ID}/dagRuns/{run_id_of(run_url)}")
    started, ended = (datetime.fromisoformat(run[key]) for key in ("start_date", "end_date"))
    timing = {
        "images": n_images,
        "run_seconds": round((ended - started).total_seconds(), 1),
        "step_seconds_in_jobs": report["step_seconds"],
    }
    (artifacts / "ui-run-seconds.json").write_text(json.dumps(timing, indent=2))
    print(f"UI run: {json.dumps(timing)}")


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_emr_form_with_empty_bucket_and_input_runs_the_variables_bucket_today(stack, page, artifacts: Path):
    with screenshot_on_failure(page, artifacts / "zz-emr-failure.png"):
        dag_url = f"{stack.url}/dags/{EMR_DAG_ID}"
        open_dag(page, dag_url)
        unpause(stack, page, EMR_DAG_ID)
        page.get_by_test_id("trigger-dag-button").click()
        form = page.get_by_role("dialog")
        # bucket and input left empty: the form must not refuse them ("This field is required")
        sync_api.expect(form.locator("#element_bucket")).to_have_value("")
        sync_api.expect(form.locator("#element_input")).to_have_value("")
        submit = form.get_by_test_id("trigger-dag-submit")
        sync_api.expect(submit).to_be_enabled()
        sync_api.expect(form.get_by_text("This field is required")).to_have_count(0)
        page.screenshot(path=artifacts / "06-emr-trigger-form.png")
        submit.click()

        page.wait_for_url(lambda address: address.startswith(f"{dag_url}/runs/"))
        run_url = page.url
        run_id = run_id_of(run_url)
        assert wait_for_end(stack, page, run_url) == "failed"  # at its first AWS call: there is none here
        page.screenshot(path=artifacts / "07-emr-run.png")

    run = api(stack, f"/dags/{EMR_DAG_ID}/dagRuns/{run_id}")
    xcom = api(
        stack, f"/dags/{EMR_DAG_ID}/dagRuns/{run_id}/taskInstances/resolve_run/xcomEntries/return_value"
    )
    settings = json.loads(xcom["value"]) if isinstance(xcom["value"], str) else xcom["value"]
    moment = run["logical_date"] or run["run_after"]  # the form's logical date, if it sent one
    logical_day = datetime.fromisoformat(moment).astimezone(UTC).date().isoformat()
    assert settings["bucket"] == EMR_VARIABLES["AIRFLOW_VAR_FRUITS_BUCKET"]
    assert settings["dt"] == logical_day == today()
    assert settings["input_prefix"] == f"uploads/dt={logical_day}/"
    # unpausing started no scheduled run for a past day beside this one (run_date.SCHEDULE)
    runs = api(stack, f"/dags/{EMR_DAG_ID}/dagRuns")
    assert [r["dag_run_id"] for r in runs["dag_runs"]] == [run_id]
