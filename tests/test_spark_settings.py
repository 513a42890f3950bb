"""A local run's memory follows the machine: the Python workers it starts beside the driver."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from fruits_platform.local import spark_settings
from fruits_platform.local.spark_settings import MEMORY_SHARE, sized
from fruits_spark.contract import ENGINES

GIB = 1024


@pytest.mark.parametrize("engine", ENGINES, ids=lambda engine: engine.name)
@pytest.mark.parametrize("machine_gib", [4, 8, 16, 24, 64])
@pytest.mark.parametrize("cores", [2, 8, 32])
def test_a_run_stays_within_its_share_of_the_machine(engine, machine_gib, cores):
    sizing = sized(engine.worker_peak_mb, machine_gib * GIB, cores)
    assert 1 <= sizing.workers <= cores
    taken = sizing.driver_mb + spark_settings.JVM_OVERHEAD_MB + sizing.workers * engine.worker_peak_mb
    # within the run's share, unless even one worker does not fit (a run still runs, on one core)
    assert taken <= machine_gib * GIB * MEMORY_SHARE or sizing.workers == 1
    assert sizing.conf() == {"spark.driver.memory": f"{sizing.driver_mb}m"}
    assert sizing.master == f"local[{sizing.workers}]"


def test_a_bigger_machine_gets_more_workers_and_the_same_heap():
    onnx = next(engine for engine in ENGINES if engine.name == "onnx")
    runs = [sized(onnx.worker_peak_mb, gib * GIB, 16) for gib in (4, 8, 16, 32, 64)]
    for smaller, bigger in itertools.pairwise(runs):
        assert bigger.workers >= smaller.workers
        # a bigger heap held more garbage, not more speed
        assert bigger.driver_mb == smaller.driver_mb
    # a laptop of 8 GiB with 16 cores does not start 16 Python workers of 600 MB
    assert runs[1].workers < 16
    assert runs[-1].workers == 16


def test_a_heavier_engine_gets_fewer_workers():
    by_name = {engine.name: engine.worker_peak_mb for engine in ENGINES}
    assert sized(by_name["tensorflow"], 8 * GIB, 8).workers < sized(by_name["onnx"], 8 * GIB, 8).workers


def test_this_machine_is_read_from_the_system():
    assert 256 < spark_settings.machine_memory_mb() < 2**24


# A local session of its own (the tests' shared one is whichever session its process made first): a Python
# worker invalidates the import caches as PySpark does before each task, and says whether the zip archives'
# importers kept what they read, and whether a file added since imports
PROBE = """
import json
import sys

from fruits_platform.local.spark_settings import local_session


def probe(batches):
    import importlib
    import sys

    import pandas as pd

    for _ in batches:
        pass
    zips = [finder for finder in sys.path_importer_cache.values() if type(finder).__name__ == "zipimporter"]
    before = [finder._files for finder in zips]
    importlib.invalidate_caches()
    kept = all(finder._files is read for finder, read in zip(zips, before))
    added = importlib.import_module("added_since").VALUE
    yield pd.DataFrame({"zips": [len(zips)], "kept": [kept], "added": [added]})


spark = local_session("local[1]", "probe", {"spark.driver.memory": "1g"})
spark.sparkContext.addPyFile(sys.argv[1])
(row,) = spark.range(1, numPartitions=1).mapInPandas(probe, "zips int, kept boolean, added string").collect()
print(json.dumps(row.asDict()))
spark.stop()
"""


def test_the_local_python_workers_keep_their_archives_and_import_what_a_job_adds(tmp_path):
    """A local session's workers run fruits_spark.python_daemon (with PySpark's own, ``kept`` is false)."""
    module = tmp_path / "added_since.py"
    module.write_text("VALUE = 'imported'\n")
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, str(module)], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    assert row["zips"] > 0  # pyspark.zip's importers, at least
    assert row["kept"]
    assert row["added"] == "imported"
