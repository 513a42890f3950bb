"""A class-data archive for the local Spark driver: what a local run pays once per machine, not per run.

Each ``spark-submit`` starts a JVM that loads and verifies several thousand of Spark's classes before the
first row, then loads more for the first Parquet write, the first Arrow batch, the first ML fit. Java's
dynamic class-data sharing (JDK 13+) writes the classes one run loaded into an archive at its exit
(``-XX:ArchiveClassesAtExit``); later JVMs with the same classpath map it (``-XX:SharedArchiveFile``)
instead of parsing and verifying those classes again: the session and the first jobs start sooner
(docs/BENCHMARKS.md, round 3).

The archive belongs to one Java and one Spark: its name carries both, so another JDK or pyspark writes its
own. A JVM that cannot use an archive (another classpath, an older Java) warns and runs without it, and the
runner's ``-XX:+IgnoreUnrecognizedVMOptions`` keeps a Java without these options (8, 11) starting as before.
EMR is not concerned: its JVMs are YARN's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyspark

from fruits_spark.contract import machine_cache


def java_binary() -> str:
    """The java spark-submit starts: ``$JAVA_HOME/bin/java``, else the one on PATH (its launcher's rule)."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java") or "java"
    return os.path.realpath(found)


def archive_path() -> Path:
    """This machine's archive for this Java and this pyspark."""
    java = hashlib.sha256(java_binary().encode()).hexdigest()[:12]
    return machine_cache("jvm") / f"spark-{pyspark.__version__}-{java}.jsa"


@contextlib.contextmanager
def class_archive() -> Iterator[list[str]]:
    """The driver's JVM flags for one spark-submit, which runs inside the ``with``: map the archive, or
    write one at the JVM's exit where there is none yet. Written under a name of this process and renamed
    once the JVM is gone, so a run never maps a half-written archive, and two first runs do not collide."""
    final = archive_path()
    if final.exists():
        yield [f"-XX:SharedArchiveFile={final}"]
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    try:
        yield [f"-XX:ArchiveClassesAtExit={scratch}"]
        if scratch.exists():
            os.replace(scratch, final)
    finally:
        scratch.unlink(missing_ok=True)
