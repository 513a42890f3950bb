"""fruits_features_emr end to end: real Airflow (dag.test), moto for S3 and EMR, real Spark steps.

moto keeps EMR steps PENDING forever; ``emr_runner.EmrStepRunner`` plays the cluster and runs each step's
spark-submit in local mode against files synced from/to moto S3.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests.emr_runner import EmrStepRunner

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = PROJECT_ROOT / "dags" / "fruits_features_emr.py"
DAG_ID = "fruits_features_emr"
REGION = "eu-west-3"
BUCKET = "fruits-test-data"
LABELS = ("apple", "lemon", "mango")
IMAGES_PER_LABEL = 3
# runs with a logical date: dag.test() gives them the data interval of a manual run at that date, the last
# complete one, [2026-11-05 02:00, 2026-11-06 02:00) UTC: they process the uploads of 2026-11-05
LOGICAL_DATE = dt.datetime(2026, 11, 6, 2, 0, tzinfo=dt.UTC)
UPLOAD_DAY = "2026-11-05"

pytestmark = pytest.mark.slow


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture
def emr_dag(airflow_db, monkeypatch):
    """The DAG as the scheduler parses it, with 1 s sensor pokes and aws_default carrying the region."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FRUITS_EMR_POKE_SECONDS", "1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": REGION}})
    )
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert not bag.import_errors
    return bag.dags[DAG_ID]


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_encryption(
            Bucket=BUCKET,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        yield s3


@pytest.fixture
def uploaded(aws, shared_images) -> int:
    """A few real images of three labels under uploads/dt=UPLOAD_DAY/<label>/, as `fruits upload` lays out."""
    count = 0
    for label in LABELS:
        for path in sorted((shared_images / label).glob("*.jpg"))[:IMAGES_PER_LABEL]:
            aws.upload_file(str(path), BUCKET, f"uploads/dt={UPLOAD_DAY}/{label}/{path.name}")
            count += 1
    return count


@pytest.fixture
def runner(tmp_path):
    with EmrStepRunner(tmp_path / "emr") as step_runner:
        yield step_runner


# -- helpers ----------------------------------------------------------------------------------------------
def run_dag(dag, conf: dict, run_after: dt.datetime, logical_date: dt.datetime | None = LOGICAL_DATE):
    """One dag.test() run; returns (dag run, {task_id: state})."""
    dagrun = dag.test(run_after=run_after, logical_date=logical_date, run_conf=conf)
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    return dagrun, states


def xcom(dagrun, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dagrun.run_id, dag_ids=DAG_ID, task_ids=task_id, key=key)
        ).first()
        return XComModel.deserialize_value(row) if row else None


def task_output(capfd) -> str:
    """What the tasks logged: dag.test() runs them in this process and logs to its stdout/stderr."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def clusters(region: str = REGION) -> list[dict]:
    return boto3.client("emr", region_name=region).list_clusters()["Clusters"]


def keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def base_conf(weights: Path, **overrides) -> dict:
    return {"bucket": BUCKET, "weights": str(weights), "k": 3, "core_nodes": 1, "region": REGION, **overrides}


def assert_refused_before_cluster(dagrun, states, task_id: str, reason: str, output: str) -> None:
    assert dagrun.state == "failed"
    assert states[task_id] == "failed"
    assert states["create_cluster"] != "success"
    assert clusters() == []
    refusals = [line for line in output.splitlines() if "AirflowFailException: " in line]
    assert refusals, output[-3000:]
    assert reason in refusals[-1]


# -- success ----------------------------------------------------------------------------------------------
def test_success_runs_three_steps_and_terminates(emr_dag, aws, uploaded, runner, shared_weights):
    dagrun, states = run_dag(emr_dag, base_conf(shared_weights), dt.datetime(2026, 11, 6, 3, tzinfo=dt.UTC))

    assert dagrun.state == "success", states
    assert [run.name for run in runner.runs] == ["ingest", "features", "pca"]
    assert all(run.returncode == 0 for run in runner.runs)
    for dataset in ("images", "features", "pca", "pca_csv"):
        assert keys(aws, f"features/{dataset}/dt={UPLOAD_DAY}/"), dataset
    report = json.loads(aws.get_object(Bucket=BUCKET, Key="features/report.json")["Body"].read())
    assert report["dt"] == UPLOAD_DAY
    assert report["counts"]["ok"] == uploaded
    # code and weights staged encrypted, under the content hash; the steps read them from there
    staged = xcom(dagrun, "stage_artifacts")
    artifacts = staged["artifacts_uri"].removeprefix(f"s3://{BUCKET}/")
    assert {"ingest.py", "features.py", "pca.py", "fruits_spark.zip", "install-python-deps.sh"} <= {
        key.removeprefix(artifacts) for key in keys(aws, artifacts)
    }
    assert (
        aws.head_object(Bucket=BUCKET, Key=artifacts + "fruits_spark.zip")["ServerSideEncryption"] == "AES256"
    )
    features_args = staged["steps"][1]["HadoopJarStep"]["Args"]
    assert features_args[features_args.index("--weights") + 1] == staged["weights_uri"]

    (cluster,) = clusters()
    emr = boto3.client("emr", region_name=REGION)
    described = emr.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert described["Status"]["State"] == "TERMINATED"
    tags = {tag["Key"]: tag["Value"] for tag in described["Tags"]}
    assert tags["run_id"] == dagrun.run_id
    assert tags["project"] == "fruits"
    assert tags["for-use-with-amazon-emr-managed-policies"] == "true"  # infra/'s policy requires it
    assert {"Classification": "emrfs-site", "Properties": {"fs.s3.enableServerSideEncryption": "true"}} in (
        described["Configurations"]
    )
    assert states["terminate_cluster"] == "success"

    summary = xcom(dagrun, "report_cost")
    assert summary["succeeded"] is True
    assert summary["cluster_id"] == cluster["Id"]
    assert summary["cost"]["estimated_cost_eur"] >= 0
    assert summary["cost"]["estimated_worst_case_eur"] > 0
    assert summary["cost"]["budget_eur"] == 10
    assert summary["counts"]["ok"] == uploaded
    cost = json.loads(
        aws.get_object(Bucket=BUCKET, Key=f"features/reports/dt={UPLOAD_DAY}/cost.json")["Body"].read()
    )
    assert cost["cost"] == summary["cost"]
    for folder in ("features/", f"features/reports/dt={UPLOAD_DAY}/"):
        report = json.loads(aws.get_object(Bucket=BUCKET, Key=folder + "report.json")["Body"].read())
        assert report["cost"] == summary["cost"]
        html = aws.get_object(Bucket=BUCKET, Key=folder + "report.html")["Body"].read().decode()
        assert f"&quot;estimated_cost_eur&quot;: {summary['cost']['estimated_cost_eur']}" in html


# -- a failing step ---------------------------------------------------------------------------------------
def test_failing_features_step_fails_run_names_step_and_terminates(
    emr_dag, aws, uploaded, runner, tmp_path, capfd
):
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an HDF5 file")

    dagrun, states = run_dag(emr_dag, base_conf(corrupt), dt.datetime(2026, 11, 6, 4, tzinfo=dt.UTC))

    assert dagrun.state == "failed"
    assert states["watch_ingest"] == "success"
    assert states["watch_features"] == "failed"
    assert states["watch_pca"] == "upstream_failed"
    assert states["terminate_cluster"] == "success"
    assert [(run.name, run.returncode == 0) for run in runner.runs] == [("ingest", True), ("features", False)]
    (cluster,) = clusters()
    state = boto3.client("emr", region_name=REGION).describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert state["Status"]["State"] == "TERMINATED"

    failed = runner.runs[-1]
    failure = xcom(dagrun, "watch_features", key="failure")
    expected_log = f"s3://{BUCKET}/emr-logs/{cluster['Id']}/steps/{failed.step_id}/stderr.gz"
    assert failure["step"] == "features"
    assert failure["log"] == expected_log
    assert "cannot load weights" in failure["reason"]
    assert failure["message"].startswith("step features FAILED")
    assert f"AirflowFailException: {failure['message']}" in task_output(capfd)
    # the log it names exists and tells the story
    log = gzip.decompress(aws.get_object(Bucket=BUCKET, Key=expected_log.split("/", 3)[3])["Body"].read())
    assert b"features: cannot load weights" in log
    summary = xcom(dagrun, "report_cost")
    assert summary["succeeded"] is False
    assert summary["failure"]["step"] == "features"


# -- guards: refused before any cluster exists -----------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "task_id", "reason", "hour"),
    [
        ({"region": "us-east-1"}, "check_gdpr", "GDPR: region us-east-1 is not in the EU allow-list", 10),
        ({"budget_eur": 0.1}, "check_budget", "exceeds budget_eur 0.1", 11),
        ({"bucket": ""}, "check_gdpr", "param bucket is required", 12),
    ],
    ids=["non-eu-region", "budget", "missing-bucket"],
)
def test_guards_refuse_before_any_cluster(
    emr_dag, aws, uploaded, shared_weights, capfd, overrides, task_id, reason, hour
):
    conf = base_conf(shared_weights, **overrides)
    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 6, hour, tzinfo=dt.UTC))

    assert_refused_before_cluster(dagrun, states, task_id, reason, task_output(capfd))
    assert not keys(aws, "artifacts/")  # nothing staged either


def test_bucket_in_another_eu_region_is_refused(emr_dag, aws, shared_weights, capfd):
    other = boto3.client("s3", region_name="eu-central-1")
    other.create_bucket(
        Bucket="fruits-frankfurt", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )

    dagrun, states = run_dag(
        emr_dag,
        base_conf(shared_weights, bucket="fruits-frankfurt"),
        dt.datetime(2026, 11, 6, 14, tzinfo=dt.UTC),
    )

    assert_refused_before_cluster(
        dagrun,
        states,
        "check_gdpr",
        "GDPR: bucket fruits-frankfurt is in eu-central-1, not in the run's region eu-west-3",
        task_output(capfd),
    )


def test_bucket_outside_eu_is_refused(emr_dag, aws, shared_weights, capfd):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="fruits-virginia")

    dagrun, states = run_dag(
        emr_dag,
        base_conf(shared_weights, bucket="fruits-virginia"),
        dt.datetime(2026, 11, 6, 15, tzinfo=dt.UTC),
    )

    assert_refused_before_cluster(
        dagrun, states, "check_gdpr", "GDPR: bucket fruits-virginia is in us-east-1", task_output(capfd)
    )


def test_manual_run_without_logical_date_reads_its_trigger_day(
    emr_dag, aws, shared_images, shared_weights, capfd
):
    """Airflow 3 manual runs may have no logical date (so no data interval): they read their run_after day."""
    for path in sorted((shared_images / "lemon").glob("*.jpg"))[:4]:
        aws.upload_file(str(path), BUCKET, f"uploads/dt=2026-11-07/lemon/{path.name}")
    # stopped by the cost guard before any cluster: its message tells which images it counted
    conf = base_conf(shared_weights, budget_eur=0.01)
    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 7, 9, 30, tzinfo=dt.UTC), logical_date=None)

    assert dagrun.logical_date is None
    assert xcom(dagrun, "check_gdpr")["input_prefix"] == "uploads/dt=2026-11-07/"
    assert_refused_before_cluster(dagrun, states, "check_budget", "for 4 images", task_output(capfd))


@pytest.mark.parametrize("k", [0, 1281])
def test_k_out_of_range_is_refused_at_trigger(emr_dag, aws, k, shared_weights):
    from airflow import settings
    from airflow.sdk.exceptions import ParamValidationError

    try:
        with pytest.raises(ParamValidationError, match="k"):
            emr_dag.test(
                run_after=dt.datetime(2026, 11, 6, 16, tzinfo=dt.UTC),
                logical_date=LOGICAL_DATE,
                run_conf=base_conf(shared_weights, k=k),
            )
    finally:
        # dag.test() leaves its session mid-transaction when it raises: it would lock SQLite for the next test
        settings.Session.remove()
    assert clusters() == []


def test_no_uploads_skips_the_run_without_a_cluster(emr_dag, aws, shared_weights):
    dagrun, states = run_dag(emr_dag, base_conf(shared_weights), dt.datetime(2026, 11, 6, 17, tzinfo=dt.UTC))

    assert dagrun.state == "success"
    assert states["check_budget"] == "skipped"
    assert states["create_cluster"] == "skipped"
    assert clusters() == []


# -- retries never leave two clusters for one run ---------------------------------------------------------
def test_retried_create_adopts_the_cluster_of_its_run(emr_dag, aws, uploaded, shared_weights):
    """An earlier try created the run's cluster then died: the next try must adopt it, not start another.

    The steps' outcome is not the point here: the sensors are marked successful without waiting."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    from fruits_platform import emr

    run_after = dt.datetime(2026, 11, 6, 5, tzinfo=dt.UTC)
    run_id = DagRun.generate_run_id(
        run_type=DagRunType.MANUAL, logical_date=LOGICAL_DATE, run_after=run_after
    )
    client = boto3.client("emr", region_name=REGION)
    # another run's cluster, still running: must be left alone
    other = client.run_job_flow(
        Name=f"{emr.CLUSTER_NAME_PREFIX} dt=2026-11-04",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
        Tags=[{"Key": "dag_id", "Value": DAG_ID}, {"Key": "run_id", "Value": "scheduled__other"}],
    )["JobFlowId"]
    earlier = client.run_job_flow(
        Name=f"{emr.CLUSTER_NAME_PREFIX} dt={UPLOAD_DAY}",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
        LogUri=f"s3://{BUCKET}/emr-logs/",
        Tags=[{"Key": "dag_id", "Value": DAG_ID}, {"Key": "run_id", "Value": run_id}],
    )["JobFlowId"]

    dagrun = emr_dag.test(
        run_after=run_after,
        logical_date=LOGICAL_DATE,
        run_conf=base_conf(shared_weights),
        mark_success_pattern=r"watch_.*",
    )

    assert dagrun.run_id == run_id
    assert dagrun.state == "success"
    assert xcom(dagrun, "create_cluster") == earlier
    assert {c["Id"] for c in clusters()} == {other, earlier}  # no third cluster
    steps = client.list_steps(ClusterId=earlier)["Steps"]
    assert sorted(step["Name"] for step in steps) == ["features", "ingest", "pca"]
    assert client.list_steps(ClusterId=other)["Steps"] == []
    assert client.describe_cluster(ClusterId=earlier)["Cluster"]["Status"]["State"] == "TERMINATED"
    assert client.describe_cluster(ClusterId=other)["Cluster"]["Status"]["State"] == "WAITING"


# -- unit level: what the DAG hands to EMR ----------------------------------------------------------------
def test_emr_steps_are_the_local_steps_over_s3():
    from fruits_platform.emr import emr_steps
    from fruits_platform.local_run import LOCAL_SPARK_CONF
    from fruits_platform.steps import PipelineParams, pipeline_steps, spark_submit_args

    params = PipelineParams(
        "s3://b/uploads/dt=2026-11-05/",
        "s3://b/features/",
        "2026-11-05",
        "s3://b/artifacts/weights/x/mobilenet_v2.weights.h5",
        k=7,
        refit=True,
    )
    steps = emr_steps(params, "s3://b/artifacts/abc/")

    assert [step["Name"] for step in steps] == ["ingest", "features", "pca"]
    for step, local in zip(steps, pipeline_steps(params), strict=True):
        args = step["HadoopJarStep"]["Args"]
        assert step["ActionOnFailure"] == "TERMINATE_CLUSTER"
        assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
        assert args[:3] == ["spark-submit", "--deploy-mode", "client"]
        assert "--master" not in args
        # the script and its arguments are exactly what fruits run-local submits
        local_args = spark_submit_args(local, "/tmp/a", LOCAL_SPARK_CONF)
        emr_at, local_at = args.index("--py-files"), local_args.index("--py-files")
        assert args[emr_at + 3 :] == local_args[local_at + 3 :] == list(local.args)
        assert args[emr_at + 1 : emr_at + 3] == [
            "s3://b/artifacts/abc/fruits_spark.zip",
            f"s3://b/artifacts/abc/{local.script}",
        ]


def test_job_flow_overrides_safety_nets():
    from fruits_platform.emr import IDLE_TIMEOUT_SECONDS, emr_configurations, job_flow_overrides

    overrides = job_flow_overrides(
        bucket="b",
        upload_day="2026-11-05",
        instance_type="m5.xlarge",
        core_nodes=2,
        use_spot=True,
        bootstrap_script_uri="s3://b/artifacts/h/install-python-deps.sh",
        requirements_uri="s3://b/artifacts/h/requirements-emr.txt",
        configurations=emr_configurations(None),
        tags={"run_id": "r"},
    )

    assert overrides["AutoTerminationPolicy"] == {"IdleTimeout": IDLE_TIMEOUT_SECONDS}
    assert overrides["LogUri"] == "s3://b/emr-logs/"
    assert overrides["ReleaseLabel"].startswith("emr-7.")
    primary, core = overrides["Instances"]["InstanceGroups"]
    assert (primary["Market"], primary["InstanceCount"]) == ("ON_DEMAND", 1)
    assert (core["Market"], core["InstanceCount"], core["InstanceRole"]) == ("SPOT", 2, "CORE")
    assert overrides["BootstrapActions"][0]["ScriptBootstrapAction"] == {
        "Path": "s3://b/artifacts/h/install-python-deps.sh",
        "Args": ["s3://b/artifacts/h/requirements-emr.txt"],
    }
    classifications = {c["Classification"] for c in overrides["Configurations"]}
    assert {"spark-env", "emrfs-site"} <= classifications
    assert overrides["VisibleToAllUsers"] is True


def test_spark_env_json_is_used_and_encryption_added():
    from fruits_platform.emr import emr_configurations

    spark_env_file = PROJECT_ROOT / "bootstrap" / "spark-env.json"
    if not spark_env_file.exists():
        pytest.skip("bootstrap/spark-env.json not present")
    spark_env = json.loads(spark_env_file.read_text())
    configurations = emr_configurations(spark_env)
    assert configurations[: len(spark_env)] == spark_env
    assert configurations[-1]["Properties"] == {"fs.s3.enableServerSideEncryption": "true"}


def test_runner_maps_s3_and_drops_deploy_mode(tmp_path):
    step_runner = EmrStepRunner(tmp_path)
    command, output = step_runner.command(
        [
            "spark-submit",
            "--deploy-mode",
            "client",
            "--py-files",
            "s3://b/a/z.zip",
            "s3://b/a/ingest.py",
            "--input",
            "s3://b/uploads/",
            "--output",
            "s3://b/features/",
            "--dt",
            "2026-11-05",
        ]
    )
    assert output == "s3://b/features/"
    assert "--deploy-mode" not in command
    assert command[1:3] == ["--master", "local[2]"]
    assert str(tmp_path / "s3" / "b" / "a" / "ingest.py") in command
    assert command[-3:] == [str(tmp_path / "s3" / "b" / "features") + "/", "--dt", "2026-11-05"]
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_cluster_left_running_fails_the_run(emr_dag, aws, uploaded, shared_weights, capfd):
    """terminate_cluster 'succeeds' without terminating (marked success): report_cost must fail the run."""
    dagrun = emr_dag.test(
        run_after=dt.datetime(2026, 11, 6, 18, tzinfo=dt.UTC),
        logical_date=LOGICAL_DATE,
        run_conf=base_conf(shared_weights),
        mark_success_pattern=r"watch_.*|terminate_cluster",
    )
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}

    assert states["report_cost"] == "failed"
    assert dagrun.state == "failed"
    (cluster,) = clusters()
    state = cluster["Status"]["State"]
    assert state in ("WAITING", "RUNNING")  # moto: RUNNING once steps were added
    assert f"cluster {cluster['Id']} is still {state} after terminate_cluster" in task_output(capfd)


def test_a_timed_out_sensor_still_terminates_the_cluster(emr_dag, aws, uploaded, shared_weights, monkeypatch):
    """No step runner: the steps stay PENDING, the sensor's (shrunk) timeout expires, teardown still runs."""
    from fruits_platform import guards

    monkeypatch.setattr(guards, "sensor_timeout_seconds", lambda images, vcpus: 3)
    dagrun, states = run_dag(emr_dag, base_conf(shared_weights), dt.datetime(2026, 11, 6, 19, tzinfo=dt.UTC))

    assert states["watch_ingest"] == "failed"
    assert states["terminate_cluster"] == "success"
    assert dagrun.state == "failed"
    (cluster,) = clusters()
    assert cluster["Status"]["State"] == "TERMINATED"


# -- unit level: staging and the sensor's failure report --------------------------------------------------
def test_staging_uploads_once_and_checks_weights(aws, tmp_path, shared_weights):
    from fruits_platform import staging

    first = staging.stage_artifacts(aws, BUCKET, str(shared_weights), 224, tmp_path / "one")
    again = staging.stage_artifacts(aws, BUCKET, str(shared_weights), 224, tmp_path / "two")

    assert first.artifacts_uri == again.artifacts_uri
    assert first.uploaded
    assert again.uploaded == []
    assert first.weights_uri.endswith("/mobilenet_v2.weights.h5")
    heads = [aws.head_object(Bucket=BUCKET, Key=key) for key in keys(aws, "artifacts/")]
    assert all(head["ServerSideEncryption"] == "AES256" for head in heads)

    with pytest.raises(staging.StagingError, match="not found"):
        staging.stage_weights(aws, BUCKET, f"s3://{BUCKET}/nowhere.weights.h5", 224, tmp_path)
    with pytest.raises(staging.StagingError, match="not found on the Airflow worker"):
        staging.stage_weights(aws, BUCKET, str(tmp_path / "missing.weights.h5"), 224, tmp_path)


def test_imagenet_weights_are_downloaded_once_per_input_size(aws, tmp_path, monkeypatch, shared_weights):
    from fruits_platform import staging

    downloads = []

    def fake_download(input_size, destination):  # stands for the Keras download (no internet here)
        downloads.append(input_size)
        return Path(shutil.copyfile(shared_weights, destination / staging.WEIGHTS_NAME))

    monkeypatch.setattr(staging, "imagenet_weights_file", fake_download)
    uri, uploaded = staging.stage_weights(aws, BUCKET, "imagenet", 160, tmp_path)
    again, uploaded_again = staging.stage_weights(aws, BUCKET, "imagenet", 160, tmp_path)

    assert uri == again == f"s3://{BUCKET}/artifacts/weights/imagenet-160/mobilenet_v2.weights.h5"
    assert (uploaded, uploaded_again, downloads) == (True, False, [160])

    def offline(input_size, destination):
        raise OSError("no route to host")

    monkeypatch.setattr(staging, "imagenet_weights_file", offline)
    with pytest.raises(staging.StagingError, match="cannot download the ImageNet weights"):
        staging.stage_weights(aws, BUCKET, "imagenet", 96, tmp_path)


def test_sensor_failure_after_deferral_names_step_and_log(aws, monkeypatch):
    """The deferrable path (docker-compose): the trigger reports a failure, execute_complete explains it."""
    from airflow.sdk.exceptions import AirflowFailException

    from fruits_platform.emr import FruitsStepSensor

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws"}))
    emr = boto3.client("emr", region_name=REGION)
    cluster_id = emr.run_job_flow(
        Name="fruits-features dt=x",
        LogUri=f"s3n://{BUCKET}/emr-logs/",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
    )["JobFlowId"]
    step_ids = emr.add_job_flow_steps(
        JobFlowId=cluster_id,
        Steps=[{"Name": n, "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}} for n in "abc"],
    )["StepIds"]
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id].steps[2].state = "CANCELLED"
    aws.put_object(
        Bucket=BUCKET,
        Key=f"emr-logs/{cluster_id}/steps/{step_ids[1]}/stderr.gz",
        Body=gzip.compress(b"noise\nfeatures: cannot load weights from s3://x: bad\nmore noise\n"),
    )
    pushed = {}

    class Ti:
        def xcom_push(self, key, value):
            pushed[key] = value

    sensor = FruitsStepSensor(
        task_id="watch_features",
        job_flow_id=cluster_id,
        step_ids=step_ids,
        step_name="features",
        region_name=REGION,
        deferrable=True,
    )
    emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id].steps[1].state = "FAILED"
    with pytest.raises(AirflowFailException) as failed:
        sensor.execute_complete({"ti": Ti()}, event={"status": "failure", "message": "Step failed"})

    log = f"s3://{BUCKET}/emr-logs/{cluster_id}/steps/{step_ids[1]}/stderr.gz"  # s3n:// read back as s3://
    reason = "features: cannot load weights from s3://x: bad"
    assert str(failed.value) == f"step features FAILED on cluster {cluster_id}: {reason}; log: {log}"
    assert pushed["failure"]["log"] == log

    pca = FruitsStepSensor(
        task_id="watch_pca", job_flow_id=cluster_id, step_ids=step_ids, step_name="pca", region_name=REGION
    )
    pca._resolve_step()
    cancelled = pca.describe_failure(emr.describe_step(ClusterId=cluster_id, StepId=step_ids[2]))
    assert cancelled["message"].startswith(f"step pca CANCELLED on cluster {cluster_id}: cluster RUNNING")
    assert cancelled["log"] == f"s3://{BUCKET}/emr-logs/{cluster_id}/"


# -- reuse across days, with the history on S3 -----------------------------------------------------------
def test_second_day_reuses_day_one_features_from_s3(emr_dag, aws, runner, sample_dir, random_weights):
    """Two daily runs through the DAG: the second finds day one's features on S3 (index, _SUCCESS markers
    and partitions survive the round trip through the bucket) and runs the CNN on its one new photo only."""
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    first_day, second_day = UPLOAD_DAY, "2026-11-06"
    photos = [p for label in LABELS for p in sorted((sample_dir / label).glob("*.jpg"))[:2]]
    for day in (first_day, second_day):
        for path in photos:
            aws.upload_file(str(path), BUCKET, f"uploads/dt={day}/{path.parent.name}/{path.name}")
    # a new photo on day two: pixels altered, so its content hash is one no day has seen
    pixels = np.asarray(Image.open(photos[0]).convert("RGB")).copy()
    pixels[:10, :10] = [255, 0, 255]
    altered = io.BytesIO()
    Image.fromarray(pixels).save(altered, format="JPEG", quality=92)
    aws.put_object(Bucket=BUCKET, Key=f"uploads/dt={second_day}/apple/new_photo.jpg", Body=altered.getvalue())

    first, _ = run_dag(emr_dag, base_conf(random_weights), dt.datetime(2026, 11, 6, 7, tzinfo=dt.UTC))
    second, states = run_dag(
        emr_dag,
        base_conf(random_weights),
        dt.datetime(2026, 11, 7, 7, tzinfo=dt.UTC),
        logical_date=dt.datetime(2026, 11, 7, 2, 0, tzinfo=dt.UTC),
    )

    assert (first.state, second.state) == ("success", "success"), states

    def s3_json(key: str) -> dict:
        return json.loads(aws.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    report = s3_json(f"features/reports/dt={second_day}/report.json")
    assert (report["counts"]["featurised"], report["counts"]["reused"]) == (1, len(photos))
    assert report["reused_from"] == {first_day: len(photos)}
    assert report["reconciled"] is True
    assert s3_json(f"features/_stats/dt={second_day}/features.json")["rows_inferred"] == 1
    for day in (first_day, second_day):
        assert f"features/features_index/dt={day}/_SUCCESS" in keys(aws, "features/features_index/")
    assert keys(aws, "features/_staging/") == []  # the staged copy is removed once the day is written

    def features(day: str) -> dict[str, bytes]:
        tables = [
            pq.read_table(io.BytesIO(aws.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
            for key in keys(aws, f"features/features/dt={day}/")
            if key.endswith(".parquet")
        ]
        rows = [row for table in tables for row in table.to_pylist()]
        return {r["content_hash"]: np.asarray(r["features"], dtype=np.float32).tobytes() for r in rows}

    day_one, day_two = features(first_day), features(second_day)
    assert len(day_two) == len(photos) + 1
    assert all(day_two[h] == day_one[h] for h in day_one)  # copied bit for bit
