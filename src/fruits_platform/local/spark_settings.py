"""The local Spark settings, in one place: the master, the session's conf, the driver JVM's flags and the
environment of a local spark-submit. ``fruits run-local``, the local DAG, the bench and the tests' session
all read them here."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

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
# A local driver JVM lives for a run, a minute or less: C2, the optimising JIT compiler, spends more CPU
# compiling than its code saves before the exit, CPU the Python workers need on a laptop's few cores
# (docs/BENCHMARKS.md, round 3). A Java without these flags starts as before (IgnoreUnrecognizedVMOptions).
LOCAL_DRIVER_JAVA_FLAGS = ("-XX:+IgnoreUnrecognizedVMOptions", "-XX:TieredStopAtLevel=1")


def driver_java_conf(*extra: str) -> dict[str, str]:
    """The Spark conf of a local driver's JVM flags: ``LOCAL_DRIVER_JAVA_FLAGS``, then ``extra``."""
    return {DRIVER_JAVA_OPTIONS: " ".join([*LOCAL_DRIVER_JAVA_FLAGS, *extra])}


def local_conf(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """A local session's conf: ``LOCAL_SPARK_CONF``, the driver's JVM flags, then ``overrides``."""
    return {**LOCAL_SPARK_CONF, **driver_java_conf(), **(overrides or {})}


def spark_env() -> dict[str, str]:
    """This environment, with Spark's driver and Python workers on this interpreter (the project's venv)."""
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)


def local_session(master: str, app: str, overrides: Mapping[str, str] | None = None):
    """A SparkSession in this process with the local settings (the tests' session runs the plan on it)."""
    from pyspark.sql import SparkSession

    os.environ.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    builder = SparkSession.builder.master(master).appName(app)
    return builder.config(map=local_conf(overrides)).getOrCreate()
