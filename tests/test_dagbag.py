"""Every DAG passes one integrity test, and the DAGs have the shape the docs describe."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fruits_spark.contract import STEP_NAMES
from tests.dags import DAG_FILES, DAGS_FOLDER, load_bag

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# what a DAG file must not import when the dag-processor parses it, every few seconds: the heavy libraries
# belong in the tasks that need them
HEAVY = ("tensorflow", "keras", "pyspark", "onnxruntime", "matplotlib", "tf2onnx")
# and the DAGs that run no AWS: no AWS client either
AWS_CLIENTS = ("botocore", "boto3")
IMPORTED_BY_PARSING = """
import json, runpy, sys
before = set(sys.modules)
import airflow.sdk  # what every DAG file imports first: Airflow's own imports are not the DAG's
before = set(sys.modules)
runpy.run_path(sys.argv[1])
print(json.dumps(sorted({name.split(".")[0] for name in set(sys.modules) - before})))
"""


def load(path: Path):
    return load_bag(path)


def validated(dag, conf: dict) -> dict:
    """The run's params as a trigger with ``conf`` gets them (raises ParamValidationError)."""
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def downstream(dag, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).downstream_task_ids)


@pytest.fixture(scope="module")
def local_dag():
    return load(DAGS_FOLDER / "fruits_features_local.py").dags["fruits_features_local"]


@pytest.fixture(scope="module")
def emr_dag():
    return load(DAGS_FOLDER / "fruits_features_emr.py").dags["fruits_features_emr"]


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_every_dag_passes_the_integrity_checks(path):
    """It imports without errors, says what it does, is tagged and owned, sets its retries, and its file
    imports nothing heavy at parse time (nor an AWS client, for a DAG without AWS)."""
    bag = load(path)
    assert bag.dags, f"{path.name} defines no DAG"
    for dag in bag.dags.values():
        assert dag.doc_md, f"{dag.dag_id} has no doc_md"
        assert "fruits" in dag.tags, f"{dag.dag_id} is not tagged fruits: {dag.tags}"
        assert dag.default_args.get("owner") == "fruits", f"{dag.dag_id} has no owner"
        assert "retries" in dag.default_args, f"{dag.dag_id} leaves its retries to the configuration"
    parsed = subprocess.run(
        [sys.executable, "-c", IMPORTED_BY_PARSING, str(path)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    imported = set(json.loads(parsed.stdout.strip().splitlines()[-1]))
    assert not imported & set(HEAVY), f"{path.name} imports {sorted(imported & set(HEAVY))} when parsed"
    if "emr" not in path.name:
        assert not imported & set(AWS_CLIENTS), f"{path.name} imports {sorted(imported & set(AWS_CLIENTS))}"


def test_local_dag_is_a_straight_line(local_dag):
    order = ["resolve_params", "stage_artifacts", "spark_steps", "summarize"]
    assert set(local_dag.task_ids) == set(order)
    for upstream, task_id in itertools.pairwise(order):
        assert task_id in downstream(local_dag, upstream), f"{upstream} -> {task_id}"
    assert downstream(local_dag, "summarize") == set()


def test_emr_dag_edges(emr_dag):
    chain = [
        "resolve_run",
        "check_gdpr",
        "check_budget",
        "stage_artifacts",
        "cluster_spec",
        "take_lease",
        "create_cluster",
        "add_steps",
        # one sensor per step of the plan, in its order
        *(f"watch_{name}" for name in STEP_NAMES),
        "terminate_cluster",
        "report_cost",
        "release_lease",
    ]
    assert set(emr_dag.task_ids) == set(chain)
    for upstream, task_id in itertools.pairwise(chain):
        assert task_id in downstream(emr_dag, upstream), f"{upstream} -> {task_id}"
    # nothing is created or staged before both guards passed
    assert {"check_gdpr", "check_budget"} <= emr_dag.get_task("stage_artifacts").get_flat_relative_ids(
        upstream=True
    )
    assert emr_dag.get_task("resolve_run").upstream_task_ids == set()


def test_terminate_is_the_teardown_of_create(emr_dag):
    create = emr_dag.get_task("create_cluster")
    terminate = emr_dag.get_task("terminate_cluster")
    report = emr_dag.get_task("report_cost")
    assert create.is_setup
    assert not create.is_teardown
    assert terminate.is_teardown
    assert report.is_teardown
    assert "create_cluster" in terminate.upstream_task_ids
    assert "create_cluster" in report.upstream_task_ids
    assert terminate.trigger_rule == "all_done_setup_success"
    assert not any(task.is_teardown for task in emr_dag.tasks if task.task_id.startswith("watch_"))
    # the day's lease: taken before the cluster exists, given back after the report, whatever failed
    take, release = emr_dag.get_task("take_lease"), emr_dag.get_task("release_lease")
    assert take.is_setup
    assert release.is_teardown
    assert {"take_lease", "report_cost"} <= release.upstream_task_ids
    assert release.trigger_rule == "all_done_setup_success"


@pytest.mark.parametrize("k", [0, 1281, -5])
def test_params_reject_k_out_of_range(emr_dag, k):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="k"):
        validated(emr_dag, {"k": k})


@pytest.mark.parametrize(
    "conf",
    [
        {"instance_type": "p5.48xlarge"},
        {"core_nodes": "many"},  # a number or auto
        {"use_spot": "sometimes"},
        {"core_nodes": 21},
        {"input_size": 200},
        {"bucket": "Not_A_Bucket"},
        {"output": "no-trailing-slash"},
        {"use_spot": "yes"},
    ],
)
def test_params_reject_bad_values(emr_dag, conf):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        validated(emr_dag, conf)


def test_params_defaults_and_limits_validate(emr_dag):
    defaults = emr_dag.params.validate()
    # empty (null) as the form sends them: the Variable fruits_bucket, the day's uploads
    assert (defaults["bucket"], defaults["input"]) == (None, None)
    assert (defaults["k"], defaults["region"]) == (100, "eu-west-3")
    # the cluster's shape is the cost guard's choice unless a run pins it (aws.shapes)
    assert (defaults["instance_type"], defaults["core_nodes"], defaults["use_spot"]) == ("auto",) * 3
    for k in (1, 1280):
        assert validated(emr_dag, {"k": k, "bucket": "fruits-data"})["k"] == k


@pytest.mark.parametrize(
    ("dag_file", "dag_id"),
    [
        ("fruits_features_emr.py", "fruits_features_emr"),
        ("fruits_features_emr_backfill.py", "fruits_features_emr_backfill"),
    ],
)
def test_the_poke_interval_is_read_when_the_dag_file_is_parsed(dag_file, dag_id, monkeypatch):
    """Parsed once without FRUITS_EMR_POKE_SECONDS (the package then imported), then with it: the second
    parse's sensors poke at its value. Read at the package's import, it stayed 60 s for the rest of a
    test session and made every later EMR DAG test wait a minute per poke. At the production minute a sensor
    gives its worker slot back between looks; at a second it stays (a reschedule a second costs a task start
    each time)."""
    monkeypatch.delenv("FRUITS_EMR_POKE_SECONDS", raising=False)
    before = load(PROJECT_ROOT / "dags" / dag_file).dags[dag_id]
    monkeypatch.setenv("FRUITS_EMR_POKE_SECONDS", "2")
    after = load(PROJECT_ROOT / "dags" / dag_file).dags[dag_id]

    def pokes(dag) -> set[tuple[float, str]]:
        return {(task.poke_interval, task.mode) for task in dag.tasks if hasattr(task, "poke_interval")}

    assert pokes(before) == {(60, "reschedule")}
    assert pokes(after) == {(2, "poke")}
