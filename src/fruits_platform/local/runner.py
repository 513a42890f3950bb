"""Runs a run's plan with Spark in local mode: the embedded default, no AWS needed.

The one runner behind ``fruits run-local``, ``fruits_features_local`` and the bench: the plan
(``pipeline.plan``) that EMR runs as its steps, here in one ``spark-submit`` of its own (``local_app``: one
JVM and one session for every step), which ends with the run: nothing stays running after it. The run holds
the day's lease (``fruits_platform.lease``) from its first write to its publish: a second run of the same
output and day, from the CLI or a DAG, fails at once naming the first. The run's log goes under the output's
``_logs/dt=<dt>/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from fruits_platform import lease
from fruits_platform.artifacts import build_artifacts, content_hash
from fruits_platform.local.class_archive import class_archive
from fruits_platform.local.preflight import check_run
from fruits_platform.local.spark_settings import driver_java_conf, local_conf, sized, spark_env
from fruits_platform.pipeline import (
    LOCAL_APP,
    PipelineParams,
    SparkStep,
    failure_reason,
    plan,
    run_values,
    spark_submit_args,
)
from fruits_spark import contract
from fruits_spark.layout import Layout
from fruits_spark.local_app import STEP_MARKER

# A local run's lease is stale as soon as its process is gone from this host: its expiry only matters to a
# run on another host sharing the output, and must outlast any local day
LOCAL_LEASE_SECONDS = 24 * 3600


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


def local_app_args(
    steps: list[SparkStep], artifacts: Path, master: str, conf: Mapping[str, str] | None = None
) -> list[str]:
    """One spark-submit of ``local_app.py`` running ``steps`` (entries of the plan) in order; ``conf`` adds
    to the local settings (the driver's JVM flags)."""
    app = SparkStep("local", LOCAL_APP, (json.dumps([[step.name, list(step.args)] for step in steps]),))
    return spark_submit_args(
        app, str(artifacts), local_conf(conf), binary=spark_submit_binary(), master=master
    )


class _StepLines:
    """Reads a run's lines as they come: which step runs, each step's seconds, the current step's lines
    (its failure reason); echoes those printed for people (``<step>: ...``) and logs everything."""

    def __init__(self, log, echo, first: str) -> None:
        self.log, self.echo, self.current = log, echo, first
        self.seconds: dict[str, float] = {}
        self.section: list[str] = []
        self.step_line = re.compile(rf"^({'|'.join(map(re.escape, contract.STEP_NAMES))}): ")

    def __call__(self, line: str) -> None:
        self.log.write(line)
        marker = line.removeprefix(STEP_MARKER).split() if line.startswith(STEP_MARKER) else None
        if marker and marker[1] == "started":
            self.current, self.section = marker[0], []
        elif marker and marker[1] == "done":
            self.seconds[marker[0]] = float(marker[2])
        else:
            self.section.append(line)
            if self.step_line.match(line):
                self.echo(line.rstrip())


def spark_submit(
    steps: list[SparkStep], artifacts: Path, master: str, conf: Mapping[str, str], lines: _StepLines
) -> int:
    """The local executor: one spark-submit of ``local_app`` running ``steps``, which ends with it; each line
    it prints goes to ``lines`` (the run's log first gets the command). Returns its exit code. (The tests run
    the same steps on their own session instead: tests/inprocess.py's ``in_process_executor``.)"""
    with class_archive() as archive_flags:
        command = local_app_args(steps, artifacts, master, {**conf, **driver_java_conf(*archive_flags)})
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
    master: str | None = None,
    echo=print,
    holder: str = "fruits run-local",
) -> dict[str, float]:
    """Runs the plan's steps ``names`` in one spark-submit of their own, holding the day's lease as
    ``holder``; returns each step's seconds. Without a ``master``, the run is sized to this machine's
    memory (``spark_settings.sized``: the driver's heap, and as many cores as the engine's workers fit).
    Lines the steps print for people (``<step>: ...``, progress included) are echoed; everything goes to
    the log. Raises StepFailed with the failed step's own reason, LeaseHeld (naming the holder) when
    another run writes the day."""
    steps = [step for step in plan(params) if step.name in names]
    values = run_values(params)
    # the driver's heap follows the machine whatever the master; the cores too unless one is given
    sizing = sized(contract.engine_record(values["engine"]).worker_peak_mb)
    conf = sizing.conf()
    master = master or sizing.master
    log = log_path(params, names[0] if len(names) == 1 else "pipeline")
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        lease.holding(values["output"], values["dt"], holder, ttl_seconds=LOCAL_LEASE_SECONDS) as held,
        log.open("w") as handle,
    ):
        if held.taken_over:
            echo(held.taken_over)
        lines = _StepLines(handle, echo, names[0])
        returncode = spark_submit(steps, artifacts, master, conf, lines)
    if returncode != 0:
        reason = failure_reason(lines.current, "".join(lines.section))
        raise StepFailed(lines.current, returncode, log, reason)
    return lines.seconds


def read_report(params: RunValues) -> dict:
    """This run's report.json (its date's copy: the top-level one belongs to whichever run came last)."""
    return json.loads(Path(_layout(params).report()).read_text())


def run_local(params: PipelineParams, master: str | None = None, echo=print) -> tuple[dict, dict[str, float]]:
    """Runs the whole plan in one spark-submit; returns (report.json, seconds per step). Raises BadRun,
    before anything is written, when a param cannot work."""
    params = params.resolved()
    check_run(params)
    artifacts = stage_artifacts(params.output)
    echo(f"steps {', '.join(contract.STEP_NAMES)} (log: {log_path(params, 'pipeline')})")
    started = time.monotonic()
    seconds = run_steps(params, list(contract.STEP_NAMES), artifacts, master, echo)
    seconds["spark_submit"] = round(time.monotonic() - started, 2)
    return read_report(params), seconds
