"""``fruits bench`` (b): ``fruits run-local`` as a user runs it, on a spark-submit of its own (cold, as every
EMR step runs), with the peak RSS of its Spark Python workers."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from fruits_platform.local.runner import run_local
from fruits_platform.local.spark_settings import LOCAL_SPARK_CONF
from fruits_platform.pipeline import PipelineParams
from fruits_spark.contract import STEP_NAMES

# what a Spark Python worker's command line names: the local runs' daemon, PySpark's, a worker alone
WORKER_MODULES = (LOCAL_SPARK_CONF["spark.python.daemon.module"], "pyspark.daemon", "pyspark.worker")
# the day every bench run writes (its outputs are the bench's own)
BENCH_DAY = "2026-01-01"


class WorkerMemory:
    """Samples, while a run runs, the RSS of the processes below this one (or below ``root``): the peak of
    one Spark Python worker (pyspark.daemon and its forks), and the peak of the whole tree summed (the
    spark-submit JVM, the Python driver, the workers), which is what the run takes from the machine. A
    forked worker's pages shared with its parent count in each, so the sum is an upper bound."""

    def __init__(self, interval: float = 0.5, root: int | None = None) -> None:
        self.interval, self.peak_mb, self.tree_peak_mb = interval, 0.0, 0.0
        self.jvm_peak_mb, self._stop = 0.0, threading.Event()
        self.root = root
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        this = psutil.Process(self.root)
        while not self._stop.is_set():
            # only this run's processes (its descendants): other test suites on the machine run Spark too
            tree = 0.0
            for process in this.children(recursive=True):
                try:
                    rss = process.memory_info().rss / 2**20
                    cmdline = " ".join(process.cmdline())
                except psutil.Error:
                    continue  # ended between the listing and the reading
                tree += rss
                # the JVM first: its command line names the daemon's module too (in its Spark conf)
                if process.name() == "java":
                    self.jvm_peak_mb = max(self.jvm_peak_mb, rss)
                elif any(module in cmdline for module in WORKER_MODULES):
                    self.peak_mb = max(self.peak_mb, rss)
            self.tree_peak_mb = max(self.tree_peak_mb, tree)
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_pipeline(
    input_dir: Path,
    weights: str,
    input_size: int,
    work: Path,
    engine: str = "onnx",
) -> dict:
    """(b): ``fruits run-local`` on its own spark-submit."""
    output = work / f"pipeline_{input_size}"
    shutil.rmtree(output, ignore_errors=True)
    params = PipelineParams(
        input=str(input_dir), output=str(output), dt=BENCH_DAY, weights=weights, input_size=input_size,
        engine=engine,
    )  # fmt: skip
    with WorkerMemory() as memory:
        report, wall = run_local(params, echo=lambda _: None)
    return {
        "ok": report["counts"]["ok"],
        "features_seconds_in_job": report["step_seconds"]["features"],
        "step_seconds_in_job": report["step_seconds"],
        "step_seconds": {name: wall[name] for name in STEP_NAMES},
        "whole_seconds": wall["spark_submit"],
        "peak_worker_rss_mb": round(memory.peak_mb),
        "peak_tree_rss_mb": round(memory.tree_peak_mb),
        "peak_jvm_rss_mb": round(memory.jvm_peak_mb),
        "model_builds": report["model_builds"],
        "output": str(output),
    }


def labelled_runs(own: dict) -> list[tuple[str, str, dict]]:
    """(key suffix, label, figures) of (b)'s runs, as the figures' keys and lines name them."""
    return [("", "own spark-submit", own)]
