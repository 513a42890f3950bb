"""The local Spark settings, in one place: the master, the session's conf, the driver JVM's flags, the
memory a run takes, and the environment of a local spark-submit. ``fruits run-local``, the local DAG, the
bench and the tests' session all read them here."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# every local core: Spark's own default, for a session outside a run (the bench's references)
LOCAL_MASTER = "local[*]"

# A local run shares the machine with its user (a browser, an IDE, a notebook): it sizes itself to this
# share of the machine's memory, one Python worker per core while their peaks fit in it.
MEMORY_SHARE = 0.5
# The driver's heap is the same on every machine: it holds plans, the PCA's 1280 x 1280 Gram matrix and
# Arrow's batches, not the data. A 2 GiB heap bought no speed over 1 GiB at 20,000 images and held 0.7-0.9
# GB more, garbage between two collections (docs/BENCHMARKS.md, round 7).
DRIVER_HEAP_MB = 1024
# what the driver's JVM holds beyond its heap (the class archive, the collector's tables, metaspace,
# threads, direct buffers): measured over a 1 GiB heap
JVM_OVERHEAD_MB = 768

DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
LOCAL_SPARK_CONF = {
    # the defaults (200) are sized for clusters: on one machine they only add task overhead
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.python.worker.reuse": "true",
    # PySpark's daemon without the ~60 ms re-read of pyspark.zip before every Python task
    "spark.python.daemon.module": "fruits_spark.python_daemon",
}
# A local driver JVM lives for a run, a minute or less: C2, the optimising JIT compiler, spends more CPU
# compiling than its code saves before the exit, CPU the Python workers need on a laptop's few cores
# (docs/BENCHMARKS.md, round 3). A Java without these flags starts as before (IgnoreUnrecognizedVMOptions).
LOCAL_DRIVER_JAVA_FLAGS = ("-XX:+IgnoreUnrecognizedVMOptions", "-XX:TieredStopAtLevel=1")


def driver_java_conf(*extra: str) -> dict[str, str]:
    """The Spark conf of a local driver's JVM flags: ``LOCAL_DRIVER_JAVA_FLAGS``, then ``extra``."""
    return {DRIVER_JAVA_OPTIONS: " ".join([*LOCAL_DRIVER_JAVA_FLAGS, *extra])}


def machine_memory_mb() -> int:
    """The memory this process may use: the machine's, or its container's limit where that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = [physical]
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) // 2**20


@dataclass(frozen=True)
class Sizing:
    """What a local run takes: the driver's heap and as many Python workers (cores of the master) as fit."""

    driver_mb: int
    workers: int

    @property
    def master(self) -> str:
        return f"local[{self.workers}]"

    def conf(self) -> dict[str, str]:
        return {"spark.driver.memory": f"{self.driver_mb}m"}


def sized(worker_peak_mb: int, machine_mb: int | None = None, cores: int | None = None) -> Sizing:
    """The run's memory from the machine's (``MEMORY_SHARE`` of it): after the driver's JVM, one Python
    worker per core while their peak (the engine record's) fits."""
    machine_mb = machine_memory_mb() if machine_mb is None else machine_mb
    cores = (os.cpu_count() or 1) if cores is None else cores
    fit = int((machine_mb * MEMORY_SHARE - DRIVER_HEAP_MB - JVM_OVERHEAD_MB) // worker_peak_mb)
    return Sizing(DRIVER_HEAP_MB, min(max(fit, 1), cores))


def local_conf(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """A local session's conf: ``LOCAL_SPARK_CONF``, the driver's JVM flags, then ``overrides``."""
    return {**LOCAL_SPARK_CONF, **driver_java_conf(), **(overrides or {})}


# glibc gives a thread that allocates outside the Java heap an arena of its own, up to 8 a core: the driver's
# task and Arrow threads kept ~0.3-0.4 GB more resident with no gain in speed (docs/BENCHMARKS.md, round 7)
MALLOC_ARENAS = "2"


def spark_env() -> dict[str, str]:
    """This environment, with Spark's driver and Python workers on this interpreter (the project's venv),
    and glibc's arenas capped unless the user set them."""
    return {
        "MALLOC_ARENA_MAX": MALLOC_ARENAS,
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }


def local_session(master: str, app: str, overrides: Mapping[str, str] | None = None):
    """A SparkSession in this process with the local settings (the tests' session runs the plan on it)."""
    from pyspark.sql import SparkSession

    os.environ.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    builder = SparkSession.builder.master(master).appName(app)
    return builder.config(map=local_conf(overrides)).getOrCreate()
