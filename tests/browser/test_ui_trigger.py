"""The local Airflow stack, driven like a person would: log in, unpause, trigger with the form, wait.

Starts `python -m fruits_platform.local.airflow_server` (what `make airflow` runs) on a free loopback port
with a fresh AIRFLOW_HOME, opens the UI in headless Chromium (Debian's /usr/bin/chromium through
Playwright), triggers `fruits_features_local` on a copy of 8 sample images, waits for the run page to say
Success, then checks the outputs on disk. Screenshots go to test-artifacts/browser/, the stack's logs too.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fruits_platform.local.airflow_server import HOST, LocalAirflow, wait_healthy
from fruits_platform.local.processes import stop_processes

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
IMAGES_PER_LABEL = 2
# bounds of the waits below: generous, the machine is shared (2 cores, other test runs)
STACK_READY_SECONDS = 600
DAG_PARSED_SECONDS = 300
RUN_DONE_SECONDS = 15 * 60


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
    root = tmp_path_factory.mktemp("images")
    for label in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        (root / label.name).mkdir()
        for image in sorted(label.glob("*.jpg"))[:IMAGES_PER_LABEL]:
            shutil.copyfile(image, root / label.name / image.name)
    return root


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on the loopback right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, artifacts: Path, random_weights: Path):
    """The local stack in a fresh AIRFLOW_HOME on free ports; always stopped, whatever happened."""
    home = tmp_path_factory.mktemp("airflow-home")
    port, worker_log_port, trigger_log_port = free_ports(3)
    local = LocalAirflow(home, port, 2, worker_log_port, trigger_log_port)
    # nothing of this pytest's own Airflow settings (tests/conftest.py) leaks into the stack
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), FRUITS_WEIGHTS=str(random_weights))
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

    toggle = page.get_by_test_id("toggle-pause")
    if toggle.get_attribute("data-state") != "checked":
        toggle.click()
    sync_api.expect(toggle).to_have_attribute("data-state", "checked")
    page.screenshot(path=artifacts / "01-dag-page.png")

    page.get_by_test_id("trigger-dag-button").click()
    form = page.get_by_role("dialog")
    form.locator("#element_input").fill(str(images))
    form.locator("#element_output").fill(str(output))
    form.locator("#element_weights").fill(str(weights))
    components = form.get_by_role("spinbutton")  # k, the form's only number field
    components.fill("4")
    components.press("Tab")
    sync_api.expect(components).to_have_value("4")
    page.screenshot(path=artifacts / "02-trigger-form.png")
    form.get_by_test_id("trigger-dag-submit").click()

    page.wait_for_url(lambda address: address.startswith(f"{dag_url}/runs/"))
    run_url = page.url
    deadline = time.monotonic() + RUN_DONE_SECONDS
    state = run_state(page, run_url)
    while state not in ("success", "failed"):
        assert time.monotonic() < deadline, (
            f"the run is still {state!r} after {RUN_DONE_SECONDS} s: {run_url}"
        )
        time.sleep(10)
        state = run_state(page, run_url)
    if state != "success":
        page.screenshot(path=artifacts / "03-run-failed.png")
        pytest.fail(f"the run ended {state}: {run_url} (logs: {artifacts / 'logs'})")
    task_states = page.get_by_test_id("table-cell-state")
    # every task of the run succeeded, as many as the DAG file defines
    sync_api.expect(task_states.filter(has_text="Success")).to_have_count(local_dag_task_count())
    page.screenshot(path=artifacts / "03-run-succeeded.png")

    n_images = sum(1 for _ in images.rglob("*.jpg"))
    report = json.loads((output / "report.json").read_text())
    assert report["counts"]["ok"] == n_images
    csv_files = list((output / "pca_csv").rglob("*.csv"))
    assert csv_files, f"no CSV under {output / 'pca_csv'}"
    rows = [row for path in csv_files for row in csv.DictReader(path.open())]
    assert len(rows) == n_images
    assert "pc_4" in rows[0]
    assert "pc_5" not in rows[0]
