"""``python -m fruits_platform.tools.bench_ui``: the 8-photo run as a user triggers it from the UI, timed.

Starts the local Airflow stack (``make airflow``'s: api-server, scheduler, dag-processor, triggerer) in a
home of its own on free ports, unpauses ``fruits_features_local`` and triggers it through the REST API, as
the trigger form does, on 8 photos of ``data/sample``, ``--runs`` times in a row; prints, for each run, the
seconds from the trigger to the run's end and Airflow's own start-to-end; stops the stack. Each run is cold:
its steps start a spark-submit of their own, as every run does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.local.airflow_server import (
    PASSWORD,
    USERNAME,
    LocalAirflow,
    free_ports,
    wait_healthy,
)
from fruits_platform.pipeline import WEIGHTS_HELP, default_weights

DAG_ID = "fruits_features_local"
PHOTOS = 8


class Api:
    """The stack's REST API with a token of the UI's user."""

    def __init__(self, url: str) -> None:
        self.url = url
        login = self._request("/auth/token", {"username": USERNAME, "password": PASSWORD}, "POST", auth=False)
        self.token = login["access_token"]

    def _request(self, path: str, body: dict | None = None, method: str = "GET", auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def __call__(self, path: str, body: dict | None = None, method: str = "GET") -> dict:
        return self._request(f"/api/v2{path}", body, method)


def photos(folder: Path) -> Path:
    """8 photos of data/sample, two of each label."""
    sample = PROJECT_ROOT / "data" / "sample"
    for label in sorted(p.name for p in sample.iterdir() if p.is_dir()):
        (folder / label).mkdir(parents=True)
        for path in sorted((sample / label).glob("*.jpg"))[: PHOTOS // 4]:
            shutil.copyfile(path, folder / label / path.name)
    return folder


def wait_for(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.HTTPError):
            found = check()
            if found:
                return found
        time.sleep(0.5)
    raise TimeoutError(f"no {what} after {seconds:.0f} s")


def task_seconds(api: Api, run_path: str, run_start: str) -> dict:
    """Where the run's seconds go between its tasks: each task's start after the run's, and its duration."""
    started = datetime.fromisoformat(run_start)
    tasks = api(f"{run_path}/taskInstances")["task_instances"]
    return {
        task["task_id"]: [
            round((datetime.fromisoformat(task["start_date"]) - started).total_seconds(), 1),
            round(task["duration"] or 0, 1),
        ]
        for task in sorted(tasks, key=lambda task: task["start_date"] or "")
        if task["start_date"]
    }


def step_seconds(output: Path) -> dict:
    report = output / "report.json"
    return json.loads(report.read_text()).get("step_seconds", {}) if report.exists() else {}


def timed_runs(api: Api, images: Path, output: Path, weights: str, runs: int) -> list[dict]:
    wait_for(lambda: api(f"/dags/{DAG_ID}"), 300, f"DAG {DAG_ID} parsed")
    api(f"/dags/{DAG_ID}", {"is_paused": False}, "PATCH")
    figures = []
    for _ in range(runs):
        conf = {"input": str(images), "output": str(output), "weights": weights}
        started = time.monotonic()
        run = api(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}, "POST")
        path = f"/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run['dag_run_id'], safe='')}"
        ended = wait_for(lambda p=path: (r := api(p))["state"] in ("success", "failed") and r, 900, "end")
        wall = time.monotonic() - started
        inside = (
            datetime.fromisoformat(ended["end_date"]) - datetime.fromisoformat(ended["start_date"])
        ).total_seconds()
        figures.append(
            {
                "state": ended["state"],
                "trigger_to_end_s": round(wall, 1),
                "airflow_s": round(inside, 1),
                "tasks": task_seconds(api, path, ended["start_date"]),
                "steps_in_jobs": step_seconds(output),
            }
        )
        print(
            f"run {len(figures)}: {ended['state']}, {wall:.1f} s from the trigger, {inside:.1f} s in Airflow"
        )
        print(f"  tasks (start after the run's start, seconds): {figures[-1]['tasks']}")
        print(f"  steps, seconds in their jobs: {figures[-1]['steps_in_jobs']}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fruits_platform.tools.bench_ui", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs in a row on one stack")
    parser.add_argument("--weights", default=default_weights(), help=WEIGHTS_HELP)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fruits-bench-ui-"))
    failed = True
    home = work / "airflow"
    port, worker_log_port, trigger_log_port = free_ports(3)
    stack = LocalAirflow(home, port, 2, worker_log_port, trigger_log_port)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    command = [sys.executable, "-m", "fruits_platform.local.airflow_server", "start", "--home", str(home)]
    command += ["--port", str(port), "--worker-log-port", str(worker_log_port)]
    command += ["--trigger-log-port", str(trigger_log_port)]
    with (work / "stack.log").open("wb") as log:
        supervisor = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(stack.url, 600, alive=lambda: supervisor.poll() is None)
        figures = timed_runs(Api(stack.url), photos(work / "photos"), work / "out", args.weights, args.runs)
        print(json.dumps(figures))
        failed = not all(run["state"] == "success" for run in figures)
        if failed:  # its logs stay for the reader
            print(f"a run failed: the task logs are under {home / 'logs'}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        stop = [sys.executable, "-m", "fruits_platform.local.airflow_server", "stop", "--home", str(home)]
        subprocess.run(stop, env=env, capture_output=True, timeout=300, check=False)
        supervisor.wait(timeout=120)
        if not failed:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
