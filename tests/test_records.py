"""Steps and engines are records: a toy step and a toy engine, each one record plus one module, flow through
`fruits run-local` (real Spark), the EMR steps, their time limits, executor sizing and staging, with no
other edit. And one copy of the Spark code: the shipped zip is the installed fruits_spark, whose parsers
read exactly the command lines the DAG side builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fruits_platform.artifacts import build_artifacts, package_dir
from fruits_platform.aws import cluster, cost
from fruits_platform.pipeline import PY_FILES_ZIP, PipelineParams
from fruits_spark import contract

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FRUITS = str(Path(sys.executable).parent / "fruits")
DAY = "2026-11-24"

TOY_STEP = '''"""A toy step: counts the features rows this run wrote, with real Spark."""

from pyspark.sql import SparkSession

from fruits_spark import contract, storage
from fruits_spark.layout import Layout


def parser():
    return contract.step_parser("toy", "Count the features rows.")


def main(argv=None):
    args = parser().parse_args(argv)
    spark = SparkSession.builder.getOrCreate()
    layout = Layout(args.output, args.dt)
    rows = spark.read.parquet(layout.dataset("features")).count()
    storage.write_stats(spark, layout, "toy", {"step": "toy", "features_rows": rows})
    print(f"toy: {rows} features rows")
'''
TOY_ENGINE = '''"""A toy engine: each image's mean colour through a fixed random projection, no model file."""

import numpy as np

from fruits_spark.contract import FEATURE_DIM


def prepare(spark, args):
    projection = np.random.default_rng(7).normal(size=(3, FEATURE_DIM)).astype(np.float32)
    return spark.sparkContext.broadcast(projection), "toy0digest"


def build(projection, input_size, threads):
    return lambda batch: batch.mean(axis=(1, 2)) @ projection
'''
# the only edits a new step and a new engine need: one record each (plus the modules above)
TOY_STEP_RECORD = '    Step("toy", "fruits_spark.toy_step", compute_share=0.05),\n'
TOY_ENGINE_RECORD = (
    '    Engine("toy", "fruits_spark.engines.toy", "a toy", requirements="requirements-emr.txt",'
    " worker_peak_mb=3000, needs_tensorflow=False),\n"
)


def add_record(text: str, opening: str, record: str) -> str:
    """``text`` with ``record`` appended to the tuple that ``opening`` starts, as a developer would."""
    assert text.count(opening) == 1, opening
    end = text.index("\n)\n", text.index(opening)) + 1
    return text[:end] + record + text[end:]


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory) -> Path:
    """A copy of the installed fruits_spark with the toy records and modules: PYTHONPATH for subprocesses."""
    root = tmp_path_factory.mktemp("toy-package")
    package = root / "fruits_spark"
    shutil.copytree(package_dir(), package, ignore=shutil.ignore_patterns("__pycache__"))
    contract_file = package / "contract.py"
    text = add_record(contract_file.read_text(), "STEPS: tuple[Step, ...] = (\n", TOY_STEP_RECORD)
    contract_file.write_text(add_record(text, "ENGINES: tuple[Engine, ...] = (\n", TOY_ENGINE_RECORD))
    (package / "toy_step.py").write_text(TOY_STEP)
    (package / "engines" / "toy.py").write_text(TOY_ENGINE)
    return root


def with_toy(toy_package: Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(toy_package), os.environ.get("PYTHONPATH", "")]))


def test_a_toy_step_and_engine_run_through_fruits_run_local(toy_package, tmp_path, sample_dir):
    images = tmp_path / "in"
    for label in ("apple", "lemon"):
        (images / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:3]:
            shutil.copyfile(path, images / label / path.name)
    output = tmp_path / "out"
    toy_run = ["--master", "local[2]", "--dt", DAY, "--engine", "toy", "--input-size", "96", "--k", "2"]
    run = subprocess.run(
        [FRUITS, "run-local", "--input", str(images), "--output", str(output), *toy_run],
        capture_output=True,
        text=True,
        env=with_toy(toy_package),
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    # the toy step ran last, in the local app, on what the toy engine embedded
    assert "toy: 6 features rows" in run.stdout
    toy_stats = json.loads((output / "_stats" / f"dt={DAY}" / "toy.json").read_text())
    assert toy_stats == {"step": "toy", "features_rows": 6}
    features = json.loads((output / "_stats" / f"dt={DAY}" / "features.json").read_text())
    assert (features["engine"], features["embedding"], features["ok"]) == ("toy", "toy0digest-s96", 6)


EMR_SIDE = """
import json
from airflow.dag_processing.dagbag import DagBag
from fruits_platform.aws import cluster, cost, sizing, staging
from fruits_platform.pipeline import PipelineParams
params = PipelineParams(input="s3://b/in/", output="s3://b/out/", dt="2026-11-24", engine="toy")
limits = cost.step_limits(200_000, 8)
steps = cluster.emr_steps(params, "s3://b/artifacts/h/", limits)
dag = DagBag(dag_folder=%r).dags["fruits_features_emr"]
print(json.dumps({
    "steps": [[step["Name"], step["HadoopJarStep"]["Args"]] for step in steps],
    "limits": limits,
    "watchers": sorted(task for task in dag.task_ids if task.startswith("watch_")),
    "toy": sizing.size_executors("m5.xlarge", 4, 2, "toy").as_dict(),
    "onnx": sizing.size_executors("m5.xlarge", 4, 2, "onnx").as_dict(),
    "requirements": staging.BOOTSTRAP_REQUIREMENTS["toy"],
}))
"""


def test_the_toy_records_reach_the_emr_steps_limits_and_sizing(toy_package, tmp_path):
    script = EMR_SIDE % str(PROJECT_ROOT / "dags" / "fruits_features_emr.py")
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=with_toy(toy_package),
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    names = [name for name, _ in found["steps"]]
    assert names == [*contract.STEP_NAMES, "toy"]
    toy_args = found["steps"][-1][1]
    assert "s3://b/artifacts/h/toy.py" in toy_args
    assert toy_args[toy_args.index("--output") + 1] == "s3://b/out/"
    # the toy's time limit is its own compute share's, between the real steps' (0.05 < pca's 0.08)
    assert list(found["limits"]) == names
    assert found["limits"]["toy"] <= found["limits"]["pca"] < found["limits"]["ingest"]
    assert found["watchers"] == sorted(f"watch_{name}" for name in names)
    # its workers' peak (3000 MB) from its record: fewer Python workers fit a node than onnx's
    assert found["toy"]["python_worker_mb"] == 3000
    assert found["toy"]["executor_cores"] < found["onnx"]["executor_cores"]
    assert found["requirements"] == "requirements-emr.txt"


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
    limits = cost.step_limits(1000, 8)
    plan = []
    for step in cluster.emr_steps(params, "s3://b/artifacts/h/", limits):
        args = step["HadoopJarStep"]["Args"]
        script = args.index(f"s3://b/artifacts/h/{step['Name']}.py")
        # the step's entry script, generated from its record, runs the module the record names
        module = contract.step_record(step["Name"]).module
        assert f"from {module} import main" in (built / f"{step['Name']}.py").read_text()
        plan.append([step["Name"], module, args[script + 1 :]])
    run = subprocess.run(
        [sys.executable, "-c", SHIPPED_PARSERS, str(built / PY_FILES_ZIP), json.dumps(plan)],
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
            assert parsed[param.name] == getattr(params, param.name), (name, param.name)
