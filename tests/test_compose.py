"""docker-compose.yaml and the Dockerfile: the local Airflow 3 stack, checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPOSE = PROJECT_ROOT / "docker-compose.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
PYPROJECT = PROJECT_ROOT / "pyproject.toml"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"

LONG_RUNNING = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
# host folder -> container folder, and the variable that tells the DAGs where it is
MOUNTS = {
    "./dags": ("/opt/airflow/dags", None),
    "./plugins": ("/opt/airflow/plugins", None),
    "./bootstrap": ("/opt/airflow/bootstrap", "FRUITS_BOOTSTRAP_DIR"),
    "./data": ("/opt/airflow/data", None),
    "./out": ("/opt/airflow/out", None),
}
PASSTHROUGH = re.compile(r"^\$\{[A-Z_]+(:-)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def common_env(compose: dict) -> dict:
    return compose["x-airflow-common"]["environment"]


def mounts_of(service: dict) -> dict[str, str]:
    """Host source -> container target, from the short volume syntax."""
    return {volume.split(":")[0]: volume.split(":")[1] for volume in service["volumes"]}


def pinned_airflow() -> str:
    """The Airflow version constraints.txt pins: the image must run the Airflow the DAGs are tested with."""
    (version,) = re.findall(r"^apache-airflow==(\S+)$", CONSTRAINTS.read_text(), re.MULTILINE)
    return version


def test_every_airflow_service_runs_the_image_built_on_the_pinned_airflow(compose: dict):
    common = compose["x-airflow-common"]
    assert common["build"] == "."  # the image is this repository's Dockerfile
    assert pinned_airflow() in common["image"]
    for name in ("airflow-init", *LONG_RUNNING):
        assert compose["services"][name]["image"] == common["image"], name


def test_airflow_3_components_all_run_and_wait_for_a_healthy_database(compose: dict):
    """Airflow 3 needs an API server, a scheduler, a DAG processor and, for deferrable operators, a triggerer;
    each starts once the database is healthy and migrated."""
    services = compose["services"]
    assert set(LONG_RUNNING) <= set(services)
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in LONG_RUNNING:
        service = services[name]
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert service["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}, name
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}, name


def _url_port(url: str) -> int:
    return int(re.search(r"//[^/:]+:(\d+)", url).group(1))


def test_health_checks_probe_where_each_component_listens(compose: dict, common_env: dict):
    from airflow.configuration import conf

    services = compose["services"]

    def probe(name: str) -> str:
        return " ".join(services[name]["healthcheck"]["test"])

    published = {int(mapping.split(":")[-1]) for mapping in services["airflow-apiserver"]["ports"]}
    assert "/api/v2/version" in probe("airflow-apiserver")
    assert _url_port(probe("airflow-apiserver")) in published
    # the scheduler's health server runs only when enabled, on Airflow's configured (else default) port
    assert common_env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    port = common_env.get(
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
        conf.get_default_value("scheduler", "scheduler_health_check_server_port"),
    )
    assert _url_port(probe("airflow-scheduler")) == int(port)
    assert "--job-type DagProcessorJob" in probe("airflow-dag-processor")
    assert "--job-type TriggererJob" in probe("airflow-triggerer")


def test_init_migrates_and_creates_the_ui_user(compose: dict):
    init = compose["services"]["airflow-init"]
    assert "healthcheck" not in init
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["environment"]["_AIRFLOW_WWW_USER_CREATE"] == "true"
    # the UI password comes from the host when set (a default only for a laptop)
    assert init["environment"]["_AIRFLOW_WWW_USER_PASSWORD"].startswith("${_AIRFLOW_WWW_USER_PASSWORD")
    assert "airflow-init" not in init["depends_on"]


def test_components_reach_each_other_where_compose_runs_them(compose: dict, common_env: dict):
    """Cross-references that break the stack when one side changes alone."""
    services = compose["services"]
    # workers talk to the API server's execution API, by its service name and container port
    execution = common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert execution.startswith("http://airflow-apiserver:")
    assert execution.endswith("/execution/")
    published = {int(mapping.split(":")[-1]) for mapping in services["airflow-apiserver"]["ports"]}
    assert _url_port(execution) in published
    # the metadata DB is the postgres service, with the user, password and database it creates
    database = re.match(
        r"postgresql\+psycopg2://([^:]+):([^@]+)@([^/:]+)(?::\d+)?/(\w+)$",
        common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    )
    assert database, common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    user, password, host, name = database.groups()
    postgres = services["postgres"]["environment"]
    assert (user, password, name) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert host in services
    # deferrable EMR sensors wait in the triggerer: deferral on needs one running
    if common_env["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "true":
        assert "airflow-triggerer" in services
    # the scheduled EMR DAG must not start a paid cluster before someone unpauses it
    assert common_env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "true"


def test_aws_connection_holds_the_region_and_no_credentials(common_env: dict):
    connection = json.loads(common_env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection == {"conn_type": "aws", "extra": {"region_name": "eu-west-3"}}
    assert common_env["AWS_DEFAULT_REGION"].startswith("eu-")


def test_aws_credentials_are_only_passed_through(compose: dict, common_env: dict):
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert name in common_env, name
        value = common_env[name]
        assert value is None or PASSTHROUGH.match(value), f"{name} must come from the host, not the file"
    text = COMPOSE.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text), "an access key id is in the file"
    assert "~/.aws:/home/airflow/.aws:ro" in compose["x-airflow-common"]["volumes"]


def test_project_folders_are_mounted_where_the_dags_look(compose: dict, common_env: dict):
    mounts = mounts_of(compose["x-airflow-common"])
    for source, (target, variable) in MOUNTS.items():
        assert mounts.get(source) == target, f"{source} is not mounted at {target}"
        if variable:
            assert common_env[variable] == target
        if source != "./out":
            assert (PROJECT_ROOT / source).is_dir(), f"{source} does not exist in the work tree"
    # one copy of the Spark code: the image's installed fruits_spark, never a second one mounted beside it
    assert not [source for source in mounts if source.startswith("./spark_jobs")]
    assert not [name for name in common_env if "SPARK_JOBS" in name]
    assert common_env["FRUITS_LOCAL_INPUT"] == "/opt/airflow/data/sample"
    assert common_env["FRUITS_LOCAL_OUTPUT"].startswith(MOUNTS["./out"][0] + "/")


# --- Dockerfile ------------------------------------------------------------------------------------------


def project_pins() -> dict[str, str]:
    """name -> version for pyproject's runtime dependencies, then constraints.txt for the rest."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[canonicalize_name(name)] = version
    for dependency in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        requirement = Requirement(dependency)
        (specifier,) = requirement.specifier
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def dockerfile_pins() -> dict[str, str]:
    found = re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\"'\\]+)", DOCKERFILE.read_text())
    return {canonicalize_name(name): version for name, version in found}


def test_dockerfile_builds_on_the_pinned_airflow_image():
    """The official image of the pinned Airflow, for the Python the project runs on."""
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert froms == [f"apache/airflow:{pinned_airflow()}-python{python}"]


# What the Dockerfile copies into the image before `pip install /opt/fruits`
IMAGE_COPIES = ("pyproject.toml", "constraints.txt", "README.md", "src", "spark_jobs/fruits_spark")
# Loaded in every task process: none of these may come with the plugins folder
HEAVY_MODULES = ("pyspark", "pandas", "pyarrow", "tensorflow", "keras")


def test_dockerfile_copies_what_the_package_build_needs():
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE)
    copied = {source.rstrip("/") for line in copies for source in line.split()}
    assert copied == set(IMAGE_COPIES)
    assert re.search(
        r"^RUN pip install .*-c /opt/fruits/constraints.txt /opt/fruits$", DOCKERFILE.read_text(), re.M
    )


@pytest.fixture(scope="module")
def image_site(tmp_path_factory) -> Path:
    """The project installed as the image installs it: built from the Dockerfile's copies only."""
    source = tmp_path_factory.mktemp("image-src")
    for name in IMAGE_COPIES:
        if (PROJECT_ROOT / name).is_dir():
            shutil.copytree(PROJECT_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(PROJECT_ROOT / name, source / name)
    site = tmp_path_factory.mktemp("image-site")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)]
    subprocess.run(pip, check=True, capture_output=True)
    return site


def image_python(site: Path, script: str, tmp_path: Path) -> dict:
    """Runs ``script`` like a task process of the compose image: the image's packages (this venv's, without
    the editable install of the work tree), the project as installed in the image, and the mounted folders
    (compose mounts dags/, plugins/ and bootstrap/ where Airflow and the DAGs look)."""
    packages = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FRUITS_BOOTSTRAP_DIR": str(PROJECT_ROOT / "bootstrap"),
        # -S skips site-packages' .pth files, among them the editable install that maps src/
        "PYTHONPATH": os.pathsep.join([str(site), str(packages)]),
    }
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_dags_import_as_in_the_compose_image(image_site, tmp_path):
    script = """
import json
from airflow.dag_processing.dagbag import DagBag
import fruits_platform, fruits_spark
bag = DagBag()
print(json.dumps({"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dag_ids), "modules": [fruits_platform.__file__, fruits_spark.__file__]}))
"""
    found = image_python(image_site, script, tmp_path)
    assert found["errors"] == {}
    assert found["dags"] == [
        "fruits_features_consumer",
        "fruits_features_emr",
        "fruits_features_emr_backfill",
        "fruits_features_local",
    ]
    assert all(module.startswith(str(image_site)) for module in found["modules"]), found["modules"]


def test_the_image_ships_its_installed_spark_code(image_site, tmp_path):
    """What the DAGs stage for Spark is the image's fruits_spark: the code that built the command lines."""
    script = """
import json, zipfile
from pathlib import Path
from fruits_platform.artifacts import build_artifacts
built = build_artifacts(Path("built"))
import fruits_spark
with zipfile.ZipFile(built / "fruits_spark.zip") as shipped:
    contract = shipped.read("fruits_spark/contract.py").decode()
print(json.dumps({"package": fruits_spark.__file__, "files": sorted(p.name for p in built.iterdir()),
    "same": contract == (Path(fruits_spark.__file__).parent / "contract.py").read_text()}))
"""
    found = image_python(image_site, script, tmp_path)
    assert found["package"].startswith(str(image_site))
    assert found["same"]
    assert {"fruits_spark.zip", "local_app.py", "ingest.py", "install-python-deps.sh"} <= set(found["files"])


def test_loading_plugins_imports_no_heavy_library(image_site, tmp_path):
    """Airflow's plugin loader runs in every task process: it must not drag Spark, pandas or TF in."""
    script = f"""
import json, sys
from airflow import plugins_manager
before = set(sys.modules)
plugins_manager.ensure_plugins_loaded()
loaded = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(json.dumps({{"heavy": sorted(loaded & set({HEAVY_MODULES!r}))}}))
"""
    found = image_python(image_site, script, tmp_path)
    assert found["heavy"] == []


def test_dockerfile_has_java_for_local_spark():
    text = DOCKERFILE.read_text()
    assert "openjdk-17-jre-headless" in text
    assert re.search(r"^ENV JAVA_HOME=\S+", text, re.MULTILINE)
    assert re.search(r"^USER airflow$", text, re.MULTILINE), "pip must run as the airflow user"


# --- Docker Compose itself, when this machine has it ------------------------------------------------------


def compose_command() -> list[str] | None:
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_accepts_the_file():
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed on this machine")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
