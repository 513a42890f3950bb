"""Shared fixtures: one Spark session, the shared data set and weights, an Airflow home for DAG tests."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
SHARED_IMAGES = SHARED / "data" / "fruits-360-sample"
SHARED_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_backbone.weights.h5"
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"

# Airflow reads its configuration when first imported: set it before any test module imports it.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="fruits-airflow-home-")
os.environ.update(
    AIRFLOW_HOME=_AIRFLOW_HOME,
    AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT_ROOT / "plugins"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__UNIT_TEST_MODE="True",
    PYSPARK_PYTHON=sys.executable,
    PYSPARK_DRIVER_PYTHON=sys.executable,
)
# py4j logs at INFO while the interpreter shuts down, after pytest closed the streams it writes to
logging.getLogger("py4j").setLevel(logging.WARNING)
# a test never reaches AWS, whatever the developer's shell holds
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ.update(
    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-west-3"
)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("fruits-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"pretrained weights not present at {SHARED_WEIGHTS} (../shared is absent here)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"shared images not present at {SHARED_IMAGES} (../shared is absent here)")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated Airflow metadata DB (SQLite) in a throw-away AIRFLOW_HOME, for dag.test()."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A randomly initialised MobileNetV2 backbone: tests need no pretrained file (a clean clone has none)."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "random_mobilenet_v2.weights.h5"
    keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=None
    ).save_weights(path)
    return path
