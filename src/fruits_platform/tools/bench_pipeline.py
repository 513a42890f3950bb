"""``fruits bench`` (b): ``fruits run-local`` as a user runs it, on a spark-submit of its own (a first run)
or on a warm local Spark daemon (a later one), with the peak RSS of its Spark Python workers."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.local import spark_daemon
from fruits_platform.local.runner import run_local
from fruits_platform.pipeline import PipelineParams
from fruits_spark.contract import STEP_NAMES

# the day every bench run writes (its outputs are the bench's own)
BENCH_DAY = "2026-01-01"


class WorkerMemory:
    """Samples the RSS of Spark's Python workers (pyspark.daemon and its forks) while a step runs: those
    below this process, or below ``root`` (the local Spark daemon's pid)."""

    def __init__(self, interval: float = 0.5, root: int | None = None) -> None:
        self.interval, self.peak_mb, self._stop = interval, 0.0, threading.Event()
        self.root = root
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        this = psutil.Process(self.root)
        while not self._stop.is_set():
            # only this run's workers (its descendants): other test suites on the machine run Spark too
            for process in this.children(recursive=True):
                try:
                    cmdline = " ".join(process.cmdline())
                    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
                        self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                except psutil.Error:
                    pass  # ended between the listing and the reading
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def warm_daemon(weights: str, input_size: int, work: Path, engine: str) -> int:
    """A local Spark daemon of this bench's own, which has run once on the bundled sample (as after
    ``make demo``); its pid."""
    spark_daemon.stop()
    output = work / "daemon_warm_up"
    shutil.rmtree(output, ignore_errors=True)
    sample = PROJECT_ROOT / "data" / "sample"
    params = PipelineParams(
        str(sample), str(output), BENCH_DAY, weights, input_size=input_size, engine=engine
    )
    run_local(params, echo=lambda _: None, daemon=True)
    return spark_daemon.status()["pid"]


def run_pipeline(
    input_dir: Path,
    weights: str,
    input_size: int,
    work: Path,
    engine: str = "onnx",
    daemon: int | None = None,
) -> dict:
    """(b): ``fruits run-local`` on its own spark-submit (a first run), or on the warm local Spark daemon
    whose pid is ``daemon``."""
    output = work / f"pipeline_{input_size}{'_daemon' if daemon else ''}"
    shutil.rmtree(output, ignore_errors=True)
    params = PipelineParams(
        str(input_dir), str(output), BENCH_DAY, weights, input_size=input_size, engine=engine
    )
    with WorkerMemory(root=daemon) as memory:
        report, wall = run_local(params, echo=lambda _: None, daemon=daemon is not None)
    return {
        "ok": report["counts"]["ok"],
        "features_seconds_in_job": report["step_seconds"]["features"],
        "step_seconds_in_job": report["step_seconds"],
        "step_seconds": {name: wall[name] for name in STEP_NAMES},
        "whole_seconds": wall["spark_submit"],
        "peak_worker_rss_mb": round(memory.peak_mb),
        "model_builds": report["model_builds"],
        "output": str(output),
    }


def run_on_warm_daemon(input_dir: Path, weights: str, input_size: int, work: Path, engine: str) -> dict:
    """(b) on a daemon of the bench's own, warmed by one run (``warm_daemon``)."""
    daemon = warm_daemon(weights, input_size, work, engine)
    return run_pipeline(input_dir, weights, input_size, work, engine, daemon)


def labelled_runs(own: dict, warm: dict | None) -> list[tuple[str, str, dict]]:
    """(key suffix, label, figures) of (b)'s runs: on its own spark-submit, then on the warm daemon."""
    return [("", "own spark-submit", own)] + ([("_daemon", "warm daemon", warm)] if warm else [])
