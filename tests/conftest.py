"""Shared fixtures: one Spark session, the shared data set and weights, an Airflow home for DAG tests."""

from __future__ import annotations

import collections
import contextlib
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dags import load_dag
from tests.random_backbone import save_random_backbone

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
SHARED_IMAGES = SHARED / "data" / "fruits-360-sample"
SHARED_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_backbone.weights.h5"
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"

# Airflow reads its configuration when first imported: set it before any test module imports it.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="fruits-airflow-home-")
# one cache for a whole `make test`: its worker processes (xdist's, children of the controller) share what
# is made once per machine (ONNX exports, the driver's class archive, the random weights), each written
# under a scratch name and renamed, so a worker never reads a half-written one
_XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
_RUN_PID = os.getppid() if _XDIST_WORKER else os.getpid()
_CACHE = os.path.join(tempfile.gettempdir(), f"fruits-test-cache-{_RUN_PID}")
os.makedirs(_CACHE, exist_ok=True)
os.environ.update(
    AIRFLOW_HOME=_AIRFLOW_HOME,
    AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT_ROOT / "plugins"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__UNIT_TEST_MODE="True",
    PYSPARK_PYTHON=sys.executable,
    PYSPARK_DRIVER_PYTHON=sys.executable,
    # ONNX exports and the driver's class archive cached per test session, never in the developer's ~/.cache
    FRUITS_CACHE=_CACHE,
)
# py4j logs at INFO while the interpreter shuts down, after pytest closed the streams it writes to
logging.getLogger("py4j").setLevel(logging.WARNING)
# a test never reaches AWS, whatever the developer's shell holds
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="eu-west-3",
    # moto's EC2 otherwise loads its catalogue of public AMIs into every fresh backend (each mock_aws() in
    # each test that makes a subnet): nothing here starts an instance from one
    MOTO_EC2_LOAD_DEFAULT_AMIS="false",
)


def _one_botocore_loader() -> None:
    """Every botocore session of a test process reads botocore's data files through one loader. moto resets
    boto3's default session at each mock_aws() and every Airflow hook makes a session of its own: each new
    session read and parsed the same endpoints, partitions and service models again, ~40 s of CPU in
    tests/test_dag_emr.py alone. The files are botocore's own and read-only; what the loader returns is
    what a fresh one would (docs/BENCHMARKS.md, round 6)."""
    import botocore.loaders
    import botocore.session

    shared = botocore.loaders.create_loader()

    def register_data_loader(session) -> None:
        session._components.lazy_register_component("data_loader", lambda: shared)

    botocore.session.Session._register_data_loader = register_data_loader


_one_botocore_loader()


def pytest_unconfigure(config):
    """The process's Airflow home goes with it; the cache (a class archive is ~190 MB) with the run's last
    process, the controller."""
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)
    if not _XDIST_WORKER:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """Files with the most slow tests first, the rest in their order: `make test` hands whole files to two
    processes as each goes idle, in this order (``--no-loadscope-reorder``; xdist would otherwise start
    with the files holding the most tests, and the browser's two long tests came last, one process alone
    on them for two minutes); ending on short files, both finish together."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    # a stable sort: a file's tests stay together and in order, as do files with as many slow tests
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def spark():
    from fruits_platform.local.spark_settings import driver_java_conf, local_session

    # the local runs' settings, smaller: two test processes share the machine. The serial collector: G1's
    # threads took ~1.5 CPU-s a whole run of this session's JVM, the serial one ~0.4 (docs/BENCHMARKS.md),
    # CPU the other test process needs; a test session does not mind its pauses
    session = local_session(
        "local[2]",
        "fruits-tests",
        {
            "spark.sql.shuffle.partitions": "4",
            "spark.driver.memory": "2g",
            **driver_java_conf("-XX:+UseSerialGC"),
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"pretrained weights not present at {SHARED_WEIGHTS} (../shared is absent here)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def random_weights() -> Path:
    """A randomly initialised MobileNetV2 backbone saved by Keras as .weights.h5: the real load path runs
    without ../shared. Features mean nothing, but every engine must compute the same ones."""
    return shared_random_backbone(seed=20261123)


def shared_random_backbone(seed: int) -> Path:
    """``save_random_backbone`` once for the whole run (``made_once``)."""
    name = f"mobilenet_v2_random_{seed}.weights.h5"
    return made_once("random-weights", name, lambda scratch: save_random_backbone(scratch, seed))


def made_once(kind: str, name: str, make: Callable[[Path], Path]) -> Path:
    """``<the run's cache>/kind/name``, made once for the whole run: the first worker to need it runs
    ``make(scratch)`` under a lock (the file it returns, written in an empty scratch folder, is renamed into
    place), and the others read it."""
    import fcntl

    folder = Path(_CACHE) / kind
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            scratch = Path(tempfile.mkdtemp(prefix="make-", dir=folder))
            try:
                os.replace(make(scratch), final)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"shared images not present at {SHARED_IMAGES} (../shared is absent here)")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[str]:
    """A migrated Airflow metadata DB (SQLite) in a throw-away AIRFLOW_HOME, for dag.test(): a copy of one
    ``airflow db migrate`` made once for the whole run (by the first worker to need it, under a lock)."""
    shutil.copyfile(migrated_db(), Path(_AIRFLOW_HOME) / "airflow.db")
    with dag_test_polls_every(0.1):
        yield _AIRFLOW_HOME


def migrated_db() -> Path:
    """An empty, migrated metadata DB in the run's cache (``made_once``); the copies start from it."""

    def migrate(home: Path) -> Path:
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            check=True,
            capture_output=True,
            env={**os.environ, "AIRFLOW_HOME": str(home)},
        )
        return home / "airflow.db"

    return made_once("airflow-db", "airflow.db", migrate)


@contextlib.contextmanager
def dag_test_polls_every(seconds: float) -> Iterator[None]:
    """dag.test() sleeps a whole second each time no task is ready. After a failure, that is once per
    layer of downstream tasks that only wait for its next pass to be marked (a refused run's
    create_cluster, terminate and report): ~60 s of the DAG tests' sleep, which this cuts to ``seconds``.
    Its other sleeps stay a second (at a test's 1 s pokes the sensors poke in place, sleeping in the task:
    ``tasks.sensor_mode``). Only sleeps called
    from dag.test() itself change: sensors, moto and Spark keep theirs."""
    from airflow.sdk.definitions.dag import DAG

    loop = inspect.unwrap(DAG.test).__code__
    real_sleep = time.sleep

    def sleep(duration: float) -> None:
        caller = sys._getframe(1)
        # the tasks dag.test() found nothing to run for, in its own variable; not there: a stock sleep
        waiting = caller.f_locals.get("ids_unrunnable") if caller.f_code is loop else None
        only_next_pass = waiting and all(ti.state is None for ti in waiting)
        real_sleep(min(duration, seconds) if only_next_pass else duration)

    time.sleep = sleep
    try:
        yield
    finally:
        time.sleep = real_sleep


@pytest.fixture
def local_dag_in_process(spark, monkeypatch):
    """The local DAG's ``spark_steps`` runs its plan on the test session (tests.inprocess) instead of a
    spark-submit of its own: what the DAG is tested for is its plan, lease and outcome; the spark-submit is
    ``fruits run-local``'s (tests/test_run_local.py) and the UI test's (tests/browser), the same executor."""
    from fruits_platform.local import runner
    from tests.inprocess import in_process_executor

    monkeypatch.setattr(runner, "spark_submit", in_process_executor)


@pytest.fixture
def emr_dag(airflow_db, monkeypatch):
    """fruits_features_emr as the scheduler parses it, with 1 s sensor pokes and aws_default carrying the
    region (the DAG tests and the IAM test)."""

    monkeypatch.setenv("FRUITS_EMR_POKE_SECONDS", "1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": "eu-west-3"}})
    )
    return load_dag("fruits_features_emr")
