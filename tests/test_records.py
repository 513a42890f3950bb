"""Steps and engines are records: a toy step (its own bounded param, its own dataset, a count in the report)
placed between features and pca, and a toy engine with an artifact staged before the cluster starts, each one
record (``tests/toy/records.py``) plus one module, registered by the test. They run through ``fruits
run-local`` (its own spark-submit), the local DAG and the EMR DAG under moto, and appear where the real ones
do, with no other edit. And one copy of the Spark code: the shipped zip is the installed fruits_spark (with
the plugins a run loaded), whose parsers read exactly the command lines the DAG side builds."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fruits_platform.artifacts import build_artifacts, package_dir
from fruits_platform.aws import cluster, cost
from fruits_platform.pipeline import PY_FILES_ZIP, PipelineParams, plan
from fruits_spark import contract
from tests.dags import load_dag
from tests.inprocess import QUALITY_OFF, QUALITY_OFF_ARGS
from tests.test_assets import asset_events, latest_event_id
from tests.test_dag_emr import BUCKET, UPLOAD_DAY, aws, base_conf, keys, run_dag, runner, uploaded, xcom

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FRUITS = str(Path(sys.executable).parent / "fruits")
DAY = "2026-11-24"
PLUGIN = "tests.toy.records"
# the contract's plan with the toy registered right after features
_REAL = list(contract.STEP_NAMES)
ORDER = [*_REAL[: _REAL.index("features") + 1], "toy", *_REAL[_REAL.index("features") + 1 :]]
# the fixtures the EMR run uses, from the EMR DAG's tests
__all__ = ["aws", "runner", "uploaded"]


@pytest.fixture
def toy_records(monkeypatch):
    """The toy records registered in this process (and named in $FRUITS_PLUGINS for the processes a run
    starts), then the contract as it was."""
    saved = (list(contract.STEPS), list(contract.ENGINES), list(contract.PLUGINS))
    # recorded by monkeypatch, so that the value load_plugins sets goes with the test
    monkeypatch.setenv(contract.PLUGINS_ENV, "")
    sys.modules.pop(PLUGIN, None)  # imported again: its import is what registers
    contract.load_plugins(PLUGIN)
    yield
    contract.STEPS[:], contract.ENGINES[:], contract.PLUGINS[:] = saved
    contract._derive()


def toy_input(folder: Path, sample_dir: Path, per_label: dict[str, int]) -> Path:
    for label, count in per_label.items():
        (folder / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:count]:
            shutil.copyfile(path, folder / label / path.name)
    return folder


def test_the_toy_records_reach_every_entry_point_and_leave_with_their_registration(toy_records):
    from fruits_platform.aws import sizing, staging
    from fruits_platform.cli import build_parser
    from fruits_platform.dag_params import emr_params
    from fruits_platform.forms import pipeline_params

    assert contract.STEP_NAMES == ORDER
    assert "toy" in contract.DATASETS
    params = PipelineParams(input="/i", output="/o", dt=DAY, engine="toy", toy_min_rows=4)
    toy = next(step for step in plan(params) if step.name == "toy")
    assert toy.args == ("--output", "/o", "--dt", DAY, "--toy-min-rows", "4")
    # its param is bounded where the real ones are: the run, the CLI, the forms
    with pytest.raises(ValueError, match=r"toy_min_rows must be within 1\.\.1000"):
        PipelineParams(input="/i", output="/o", dt=DAY, toy_min_rows=0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run-local", "--input", "i", "--output", "o", "--toy-min-rows", "0"])
    assert build_parser().parse_args(["run-local", "--input", "i", "--output", "o"]).toy_min_rows == 1
    assert pipeline_params({})["toy_min_rows"].schema["maximum"] == 1000
    assert "toy" in pipeline_params({})["engine"].schema["enum"]
    assert emr_params()["toy_min_rows"].schema["minimum"] == 1
    # EMR: its step, its time limit between the real ones', its engine's workers and bootstrap
    limits = cost.step_limits(200_000, 200_000 * 5_000, 8)
    steps = cluster.emr_steps(params, "s3://b/artifacts/h/", limits)
    assert [step["Name"] for step in steps] == ORDER == list(limits)
    assert limits["toy"] <= limits["pca"] < limits["ingest"]
    assert "s3://b/artifacts/h/toy.py" in steps[2]["HadoopJarStep"]["Args"]
    toy_workers = sizing.size_executors("m5.xlarge", 4, 2, "toy").as_dict()
    assert toy_workers["python_worker_mb"] == 3000
    assert toy_workers["executor_cores"] < sizing.size_executors("m5.xlarge", 4, 2, "onnx").executor_cores
    assert staging.bootstrap_requirements("toy") == "requirements-emr.txt"


def test_the_contract_is_as_it_was_without_the_toy():
    assert "toy" not in contract.STEP_NAMES
    assert "toy" not in contract.ENGINE_NAMES
    assert "toy_min_rows" not in contract.PARAMS
    assert contract.STEP_NAMES[-1] == contract.PUBLISH.name


def assert_toy_day(output: Path, day: str, report: dict, labels: int) -> None:
    """The toy dataset published with the day, its count and seconds in the report, the toy engine's rows."""
    toy = pq.read_table(output / "toy" / f"dt={day}").to_pylist()
    assert len(toy) == labels == report["counts"]["toy_labels"]
    assert "toy" in report["published"]
    assert list(report["step_seconds"]) == ORDER
    assert report["engine"] == "toy"
    assert f"toy labels: {labels}" in (output / "reports" / f"dt={day}" / "report.html").read_text()
    assert not (output / "_staging" / "toy" / f"dt={day}").exists()


@pytest.mark.slow
def test_the_toy_step_and_engine_run_through_fruits_run_local(tmp_path, sample_dir, random_weights):
    images = toy_input(tmp_path / "in", sample_dir, {"apple": 3, "lemon": 2})
    output = tmp_path / "out"
    env = dict(
        os.environ,
        FRUITS_PLUGINS=PLUGIN,
        PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    toy_run = ["--master", "local[2]", "--dt", DAY, "--engine", "toy", "--input-size", "96", "--k", "2"]
    toy_run += ["--weights", str(random_weights), *QUALITY_OFF_ARGS]
    run = subprocess.run(
        [
            FRUITS,
            "run-local",
            "--input",
            str(images),
            "--output",
            str(output),
            *toy_run,
            "--toy-min-rows",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "toy: 1 labels with at least 3 rows" in run.stdout
    assert "toy labels: 1" in run.stdout  # the done: line, in the report's words
    report = json.loads((output / "reports" / f"dt={DAY}" / "report.json").read_text())
    assert_toy_day(output, DAY, report, labels=1)


@pytest.mark.slow
@pytest.mark.usefixtures("local_dag_in_process")
def test_the_toy_step_and_engine_run_through_the_local_dag(
    toy_records, airflow_db, tmp_path, sample_dir, random_weights
):

    images = toy_input(tmp_path / "in", sample_dir, {"apple": 2, "mango": 2})
    output = tmp_path / "out"
    dag = load_dag("fruits_features_local")
    assert "toy_min_rows" in dag.params
    conf = {
        "input": str(images),
        "output": str(output),
        "weights": str(random_weights),
        "engine": "toy",
        "input_size": 96,
        "k": 2,
        "toy_min_rows": 2,
        "dt": DAY,
        **QUALITY_OFF,
    }
    since = latest_event_id()
    dagrun = dag.test(run_conf=conf)
    assert dagrun.state == "success"
    report = json.loads((output / "reports" / f"dt={DAY}" / "report.json").read_text())
    assert_toy_day(output, DAY, report, labels=2)
    ((_, event, _),) = asset_events("fruits_features", dagrun.run_id, since)
    assert event["datasets"]["toy"] == f"{(output / 'toy').resolve().as_uri()}/dt={DAY}"
    assert event["counts"]["toy_labels"] == 2


@pytest.mark.slow
def test_the_toy_step_and_engine_run_through_the_emr_dag(
    toy_records, airflow_db, aws, uploaded, runner, random_weights, monkeypatch
):

    monkeypatch.setenv("FRUITS_EMR_POKE_SECONDS", "1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": "eu-west-3"}})
    )
    dag = load_dag("fruits_features_emr")
    assert {"toy_min_rows", "engine"} <= set(dag.params)
    conf = base_conf(random_weights, engine="toy", input_size=96, k=2, toy_min_rows=3)
    since = latest_event_id()
    dagrun, states = run_dag(dag, conf, dt.datetime(2026, 11, 6, 3, tzinfo=dt.UTC))
    assert dagrun.state == "success", states
    assert [run.name for run in runner.runs] == ORDER
    assert {f"watch_{name}" for name in ORDER} <= set(states)
    # the toy engine's artifact was built and staged before the cluster, and the features step read it
    staged = xcom(dagrun, "stage_artifacts")
    assert staged["engine_artifact_uri"].endswith("/toy_projection.npy")
    artifact_key = staged["engine_artifact_uri"].removeprefix(f"s3://{BUCKET}/")
    assert keys(aws, artifact_key) == [artifact_key]
    features_args = xcom(dagrun, "cluster_spec")["steps"][1]["HadoopJarStep"]["Args"]
    assert features_args[features_args.index("--engine-artifact") + 1] == staged["engine_artifact_uri"]
    features_log = next(run.log for run in runner.runs if run.name == "features").read_text()
    assert "toy engine: artifact" in features_log
    output = xcom(dagrun, "resolve_run")["output_prefix"]  # the run's prefix in the bucket
    toy_keys = keys(aws, f"{output}toy/dt={UPLOAD_DAY}/")
    assert any(key.endswith(".parquet") for key in toy_keys), toy_keys
    report = json.loads(aws.get_object(Bucket=BUCKET, Key=f"{output}report.json")["Body"].read())
    assert report["counts"]["toy_labels"] == 3  # three labels of three images each
    assert "toy" in report["published"]
    ((_, event, _),) = asset_events("fruits_features", dagrun.run_id, since)
    assert event["datasets"]["toy"] == f"s3://{BUCKET}/{output}toy/dt={UPLOAD_DAY}"


# --- one copy of the Spark code ---------------------------------------------------------------------------

SHIPPED_PARSERS = """
import importlib, json, sys
zip_path, plan = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, zip_path)
import fruits_spark
from fruits_spark import contract
parsed = {
    name: vars(importlib.import_module(module).parser().parse_args(args)) for name, module, args in plan
}
print(json.dumps({"file": fruits_spark.__file__, "steps": list(contract.STEP_NAMES), "parsed": parsed}))
"""


def test_the_shipped_jobs_parse_what_the_emr_dag_submits(tmp_path):
    built = build_artifacts(tmp_path / "artifacts")
    shipped = zipfile.ZipFile(built / PY_FILES_ZIP)
    installed = sorted(p.relative_to(package_dir().parent).as_posix() for p in package_dir().rglob("*.py"))
    # the zip is the installed package, file for file and byte for byte
    assert sorted(shipped.namelist()) == installed
    for name in installed:
        assert shipped.read(name) == (package_dir().parent / name).read_bytes(), name
    params = PipelineParams(
        input="s3://b/in/", output="s3://b/out/", dt="2026-11-24", weights="s3://b/w.weights.h5",
        input_size=160, k=7, refit=True, engine="tensorflow", recompute=True,
    )  # fmt: skip
    limits = cost.step_limits(1000, 1000 * 5_000, 8)
    shipped_plan = []
    for step in cluster.emr_steps(params, "s3://b/artifacts/h/", limits):
        args = step["HadoopJarStep"]["Args"]
        script = args.index(f"s3://b/artifacts/h/{step['Name']}.py")
        # the step's entry script, generated from its record, runs the module the record names
        module = contract.step_record(step["Name"]).module
        assert f"from {module} import main" in (built / f"{step['Name']}.py").read_text()
        shipped_plan.append([step["Name"], module, args[script + 1 :]])
    run = subprocess.run(
        [sys.executable, "-c", SHIPPED_PARSERS, str(built / PY_FILES_ZIP), json.dumps(shipped_plan)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(built / PY_FILES_ZIP))
    assert found["steps"] == list(contract.STEP_NAMES)
    for name, parsed in found["parsed"].items():
        for param in contract.step_params(name):
            assert parsed[param.name] == params[param.name], (name, param.name)


def test_the_shipped_code_carries_the_plugins_of_the_run(toy_records, tmp_path):
    """Built with the toy registered: the zip holds its modules and every entry script loads its records
    first, so an EMR step's driver knows the toy step and engine without $FRUITS_PLUGINS."""
    built = build_artifacts(tmp_path / "artifacts")
    names = set(zipfile.ZipFile(built / PY_FILES_ZIP).namelist())
    assert {"tests/__init__.py", "tests/toy/__init__.py", "tests/toy/records.py"} <= names
    assert {"tests/toy/step.py", "tests/toy/engine.py"} <= names
    probe = (
        "import sys, runpy; sys.path.insert(0, sys.argv[1]); sys.argv = [sys.argv[2], '--help']; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {key: value for key, value in os.environ.items() if key not in (contract.PLUGINS_ENV, "PYTHONPATH")}
    run = subprocess.run(
        [sys.executable, "-c", probe, str(built / PY_FILES_ZIP), str(built / "toy.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--toy-min-rows" in run.stdout
