"""Runs the pipeline's steps with Spark in local mode: the embedded default, no AWS needed.

The one runner behind ``fruits run-local``, ``fruits_features_local`` and the bench: the same step
definitions as EMR and the same artifacts. The steps run in one Spark application (in the local DAG, its one
task ``spark_steps``): the local Spark daemon's (``spark_daemon``), else a spark-submit of their own. The
run's log goes under the output's ``_logs/dt=<dt>/``.
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
from fruits_platform.local import spark_daemon
from fruits_platform.local.class_archive import class_archive
from fruits_platform.local.preflight import check_run
from fruits_platform.pipeline import (
    LOCAL_APP,
    PipelineParams,
    SparkStep,
    failure_reason,
    pipeline_steps,
    run_values,
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
# only: 20 s of CPU instead of 36 s for a run on 200 phone photos, 25 s of wall time instead of 30 s
# (docs/BENCHMARKS.md). A Java without these flags starts as before (IgnoreUnrecognizedVMOptions).
LOCAL_DRIVER_JAVA_FLAGS = ("-XX:+IgnoreUnrecognizedVMOptions", "-XX:TieredStopAtLevel=1")


def driver_java_conf(*extra: str) -> dict[str, str]:
    """The Spark conf of a local driver's JVM flags: ``LOCAL_DRIVER_JAVA_FLAGS``, then ``extra``."""
    return {DRIVER_JAVA_OPTIONS: " ".join([*LOCAL_DRIVER_JAVA_FLAGS, *extra])}


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
    values = run_values(params)
    return Layout(values["output"], values["dt"])


def log_path(params: RunValues, name: str) -> Path:
    """The Spark log of one runner invocation: ``<step>.log``, or ``pipeline.log`` for a whole run."""
    return Path(_layout(params).logs()) / f"{name}.log"


def _plan(params: RunValues, names: list[str]) -> list:
    """``names`` with the steps' own arguments (EMR's), as ``fruits_spark.local_app`` takes them."""
    return [[step.name, list(step.args)] for step in pipeline_steps(params) if step.name in names]


def local_app_args(
    params: RunValues, names: list[str], artifacts: Path, master: str, conf: Mapping[str, str] | None = None
) -> list[str]:
    """One spark-submit of ``local_app.py`` running ``names``; ``conf`` adds to ``LOCAL_SPARK_CONF`` (the
    driver's JVM flags)."""
    app = SparkStep("local", LOCAL_APP, (json.dumps(_plan(params, names)),))
    return spark_submit_args(
        app, str(artifacts), {**LOCAL_SPARK_CONF, **(conf or {})}, binary=spark_submit_binary(), master=master
    )


class _StepLines:
    """Reads a run's lines as they come: which step runs, each step's seconds, the current step's lines
    (its failure reason); echoes those printed for people (``<step>: ...``) and logs everything."""

    STEP_LINE = re.compile(rf"^({'|'.join(STEP_NAMES)}): ")

    def __init__(self, log, echo, first: str) -> None:
        self.log, self.echo, self.current = log, echo, first
        self.seconds: dict[str, float] = {}
        self.section: list[str] = []

    def __call__(self, line: str) -> None:
        self.log.write(line)
        marker = line.removeprefix(STEP_MARKER).split() if line.startswith(STEP_MARKER) else None
        if marker and marker[1] == "started":
            self.current, self.section = marker[0], []
        elif marker and marker[1] == "done":
            self.seconds[marker[0]] = float(marker[2])
        else:
            self.section.append(line)
            if self.STEP_LINE.match(line):
                self.echo(line.rstrip())


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


def daemon_serves(params: RunValues, master: str) -> bool:
    """The daemon is local[*] with this machine's files: another master, or an s3:// URI (read with the
    credentials of the JVM's environment, the daemon's, not the caller's), gets a spark-submit of its own."""
    values = run_values(params)
    uris = [values[name] for name in ("input", "output", "weights", "onnx_model") if values.get(name)]
    return master == LOCAL_MASTER and all(_is_local(str(uri)) for uri in uris)


def _on_daemon(params: RunValues, names: list[str], artifacts: Path, lines: _StepLines) -> int | None:
    """The run on the local Spark daemon: its exit status, or None (said in the log and echoed) when no
    daemon could take it."""

    def starting() -> None:
        lines.echo(
            f"starting the local Spark daemon: later local runs skip Spark's start-up; it exits after "
            f"{spark_daemon.IDLE_SECONDS // 60} idle minutes (or `fruits daemon stop`)"
        )

    lines.log.write(f"on the local Spark daemon (its Spark log: {spark_daemon.log_path()})\n")
    lines.log.flush()
    try:
        return spark_daemon.submit(_plan(params, names), artifacts.name, spark_env(), lines, starting)
    except spark_daemon.DaemonUnavailable as error:
        lines(f"{names[0]}: {error}; running a spark-submit of its own\n")
        return None


def _spark_submit(
    params: RunValues, names: list[str], artifacts: Path, master: str, lines: _StepLines
) -> int:
    with class_archive() as archive_flags:
        command = local_app_args(params, names, artifacts, master, driver_java_conf(*archive_flags))
        lines.log.write(" ".join(command) + "\n")
        lines.log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=spark_env(), text=True, bufsize=1
        )
        for line in process.stdout:
            lines(line)
        return process.wait()


def run_steps(
    params: RunValues,
    names: list[str],
    artifacts: Path,
    master: str = LOCAL_MASTER,
    echo=print,
    daemon: bool = True,
) -> dict[str, float]:
    """Runs ``names`` in one Spark application, the local Spark daemon's where it serves the run (and
    ``daemon``), else a spark-submit of its own; returns each step's seconds. Lines the steps print for
    people (``<step>: ...``, progress included) are echoed; everything goes to the log.
    Raises StepFailed with the failed step's own reason."""
    log = log_path(params, names[0] if len(names) == 1 else "pipeline")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        lines = _StepLines(handle, echo, names[0])
        returncode = None
        if daemon and daemon_serves(params, master):
            returncode = _on_daemon(params, names, artifacts, lines)
        if returncode is None:
            returncode = _spark_submit(params, names, artifacts, master, lines)
    if returncode != 0:
        reason = failure_reason(lines.current, "".join(lines.section))
        raise StepFailed(lines.current, returncode, log, reason)
    return lines.seconds


def read_report(params: RunValues) -> dict:
    """This run's report.json (its date's copy: the top-level one belongs to whichever run came last)."""
    return json.loads(Path(_layout(params).report()).read_text())


def run_local(
    params: PipelineParams, master: str = LOCAL_MASTER, echo=print, daemon: bool = True
) -> tuple[dict, dict[str, float]]:
    """Runs every step of ``contract.STEPS`` in one Spark application; returns (report.json, seconds per
    step). Raises BadRun, before anything is written, when a param cannot work."""
    check_run(params)
    artifacts = stage_artifacts(params.output)
    echo(f"steps {', '.join(STEP_NAMES)} (log: {log_path(params, 'pipeline')})")
    started = time.monotonic()
    seconds = run_steps(params, list(STEP_NAMES), artifacts, master, echo, daemon)
    seconds["spark_submit"] = round(time.monotonic() - started, 2)
    return read_report(params), seconds
