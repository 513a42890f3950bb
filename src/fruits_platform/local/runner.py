"""Runs the pipeline's steps with spark-submit in local mode: the embedded default, no AWS needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fruits_platform.artifacts import build_artifacts
from fruits_platform.pipeline import PipelineParams, SparkStep, pipeline_steps, spark_submit_args

LOCAL_SPARK_CONF = {
    "spark.driver.memory": "4g",
    # the defaults (200) are sized for clusters: on one machine they only add task overhead
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.python.worker.reuse": "true",
}


class StepFailed(RuntimeError):
    def __init__(self, step: str, returncode: int, log: Path, reason: str) -> None:
        super().__init__(f"step {step} failed (exit {returncode}): {reason} [log: {log}]")
        self.step, self.returncode, self.log, self.reason = step, returncode, log, reason


def spark_submit_binary() -> str:
    beside_python = Path(sys.executable).parent / "spark-submit"
    found = str(beside_python) if beside_python.exists() else shutil.which("spark-submit")
    if not found:
        raise FileNotFoundError("spark-submit not found: install pyspark (make setup)")
    return found


def spark_env() -> dict[str, str]:
    """This environment, with Spark's driver and Python workers on this interpreter (the project's venv)."""
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)


def failure_reason(step: str, log_text: str) -> str:
    """The line that explains a failure: the job's own one-line message, else the last exception."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith(f"{step}: ")]
    if own:
        return own[-1]
    errors = [line for line in lines if re.search(r"(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:300]


def run_step(step: SparkStep, artifacts: Path, logs: Path, master: str, env: dict[str, str]) -> float:
    command = spark_submit_args(step, str(artifacts), LOCAL_SPARK_CONF, master)
    command[0] = spark_submit_binary()
    log = logs / f"{step.name}.log"
    started = time.monotonic()
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    if completed.returncode != 0:
        raise StepFailed(step.name, completed.returncode, log, failure_reason(step.name, log.read_text()))
    return time.monotonic() - started


def run_local(params: PipelineParams, master: str = "local[*]", echo=print) -> dict:
    """Runs ingest, features and pca; returns report.json with the wall time of each spark-submit."""
    output = Path(params.output_uri)
    logs = output / "_logs" / f"dt={params.dt}"
    logs.mkdir(parents=True, exist_ok=True)
    env = spark_env()
    wall = {}
    with tempfile.TemporaryDirectory(prefix="fruits-artifacts-") as folder:
        artifacts = build_artifacts(Path(folder))
        for step in pipeline_steps(params):
            echo(f"[{step.name}] spark-submit ... (log: {logs / (step.name + '.log')})")
            wall[step.name] = round(run_step(step, artifacts, logs, master, env), 2)
    report_path = output / "report.json"
    report = json.loads(report_path.read_text())
    report["spark_submit_seconds"] = wall
    report_path.write_text(json.dumps(report, indent=2))
    return report
