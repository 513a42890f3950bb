"""Runs the pipeline's steps with spark-submit in local mode: the embedded default, no AWS needed.

The one runner behind ``fruits run-local``, ``fruits_features_local`` and the bench: the same step
definitions as EMR and the same artifacts. The steps run in one Spark application (in the local DAG, its one
task ``spark_steps``), whose log goes under the output's ``_logs/dt=<dt>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from fruits_platform.artifacts import build_artifacts, content_hash
from fruits_platform.local.class_archive import class_archive
from fruits_platform.local.preflight import check_run
from fruits_platform.pipeline import (
    LOCAL_APP,
    PipelineParams,
    SparkStep,
    failure_reason,
    pipeline_steps,
    spark_submit_args,
)
from fruits_spark.contract import STEP_NAMES
from fruits_spark.layout import Layout
from fruits_spark.local_app import STEP_MARKER

# every local core: the default master of `fruits run-local`, the local DAG and the bench
LOCAL_MASTER = "local[*]"

DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
LOCAL_SPARK_CONF = {
    "spark.driver.memory": "4g",
    # the defaults (200) are sized for clusters: on one machine they only add task overhead
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.python.worker.reuse": "true",
}
# The local driver JVM lives for a run, a minute or less: C2, the optimising JIT compiler, spends more CPU
# compiling than its code saves before the exit, CPU the Python workers need on a laptop's few cores. C1
# only: 36 s of CPU instead of 20 s for a run on 200 phone photos, 30 s against 25 s of wall time
# (docs/BENCHMARKS.md). A Java without these flags starts as before (IgnoreUnrecognizedVMOptions).
LOCAL_DRIVER_JAVA_FLAGS = ("-XX:+IgnoreUnrecognizedVMOptions", "-XX:TieredStopAtLevel=1")


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


def stage_artifacts(output: str) -> Path:
    """The steps' code under ``<output>/_artifacts/<content hash>/``, built once per content."""
    with tempfile.TemporaryDirectory(prefix="fruits-artifacts-") as scratch:
        built = build_artifacts(Path(scratch))
        target = Path(output) / "_artifacts" / content_hash(built)
        if not target.exists():
            shutil.copytree(built, target)
    return target


# A run's params: a PipelineParams, or its ``as_dict()`` as the local DAG passes it between tasks (validated
# once, by its resolve_params task)
RunValues = PipelineParams | Mapping


def _layout(params: RunValues) -> Layout:
    values = params.as_dict() if isinstance(params, PipelineParams) else params
    return Layout(values["output"], values["dt"])


def log_path(params: RunValues, name: str) -> Path:
    """The Spark log of one runner invocation: ``<step>.log``, or ``pipeline.log`` for a whole run."""
    return Path(_layout(params).logs()) / f"{name}.log"


def local_app_args(
    params: RunValues, names: list[str], artifacts: Path, master: str, conf: Mapping[str, str] | None = None
) -> list[str]:
    """One spark-submit of ``local_app.py`` running ``names`` with the steps' own arguments (EMR's);
    ``conf`` adds to ``LOCAL_SPARK_CONF`` (the driver's JVM flags)."""
    steps = [step for step in pipeline_steps(params) if step.name in names]
    plan = json.dumps([[step.name, list(step.args)] for step in steps])
    app = SparkStep("local", LOCAL_APP, (plan,))
    return spark_submit_args(
        app, str(artifacts), {**LOCAL_SPARK_CONF, **(conf or {})}, binary=spark_submit_binary(), master=master
    )


def run_steps(
    params: RunValues, names: list[str], artifacts: Path, master: str = LOCAL_MASTER, echo=print
) -> dict[str, float]:
    """Runs ``names`` in one Spark application; returns each step's seconds. Lines the steps print for
    people (``<step>: ...``, progress included) are echoed; everything goes to the log.
    Raises StepFailed with the failed step's own reason."""
    log = log_path(params, names[0] if len(names) == 1 else "pipeline")
    log.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    current = names[0]
    step_lines = re.compile(rf"^({'|'.join(STEP_NAMES)}): ")
    with class_archive() as archive_flags, log.open("w") as handle:
        java_flags = " ".join([*LOCAL_DRIVER_JAVA_FLAGS, *archive_flags])
        command = local_app_args(params, names, artifacts, master, {DRIVER_JAVA_OPTIONS: java_flags})
        handle.write(" ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=spark_env(), text=True, bufsize=1
        )
        section: list[str] = []
        for line in process.stdout:
            handle.write(line)
            marker = line.removeprefix(STEP_MARKER).split() if line.startswith(STEP_MARKER) else None
            if marker and marker[1] == "started":
                current, section = marker[0], []
            elif marker and marker[1] == "done":
                seconds[marker[0]] = float(marker[2])
            else:
                section.append(line)
                if step_lines.match(line):
                    echo(line.rstrip())
        returncode = process.wait()
    if returncode != 0:
        raise StepFailed(current, returncode, log, failure_reason(current, "".join(section)))
    return seconds


def read_report(params: RunValues) -> dict:
    """This run's report.json (its date's copy: the top-level one belongs to whichever run came last)."""
    return json.loads(Path(_layout(params).report()).read_text())


def run_local(
    params: PipelineParams, master: str = LOCAL_MASTER, echo=print
) -> tuple[dict, dict[str, float]]:
    """Runs every step of ``contract.STEPS`` in one Spark application; returns (report.json, seconds per
    step). Raises BadRun, before anything is written, when a param cannot work."""
    check_run(params)
    artifacts = stage_artifacts(params.output)
    echo(f"spark-submit {LOCAL_APP}: {', '.join(STEP_NAMES)} (log: {log_path(params, 'pipeline')})")
    started = time.monotonic()
    seconds = run_steps(params, list(STEP_NAMES), artifacts, master, echo)
    seconds["spark_submit"] = round(time.monotonic() - started, 2)
    return read_report(params), seconds
