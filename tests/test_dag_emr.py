"""fruits_features_emr end to end: real Airflow (dag.test), moto for S3 and EMR, real Spark steps.

moto keeps EMR steps PENDING forever; ``emr_runner.EmrStepRunner`` plays the cluster and runs each step's
spark-submit in local mode against files synced from/to moto S3.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
import time
from functools import partial
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from fruits_spark.contract import PROVISIONAL_MODEL, STEP_NAMES
from tests.emr_runner import EmrStepRunner
from tests.inprocess import QUALITY_OFF
from tests.test_assets import asset_events

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = PROJECT_ROOT / "dags" / "fruits_features_emr.py"
DAG_ID = "fruits_features_emr"
REGION = "eu-west-3"
BUCKET = "fruits-test-data"
LABELS = ("apple", "lemon", "mango")
IMAGES_PER_LABEL = 3
# dag.test() runs are manual: they process the UTC day of their logical date (fruits_platform.run_date)
LOGICAL_DATE = dt.datetime(2026, 11, 5, 2, 0, tzinfo=dt.UTC)
UPLOAD_DAY = "2026-11-05"
SERVICE_ROLE = "fruits-emr-service-eu-west-3"
JOB_FLOW_ROLE = "fruits-emr-node-eu-west-3"
EMR_TAG = ("for-use-with-amazon-emr-managed-policies", "true")

pytestmark = pytest.mark.slow


# -- fixtures ---------------------------------------------------------------------------------------------
def create_subnet(
    region: str = REGION, *, tagged: bool = True, internet: bool = False, s3_endpoint: bool = True
) -> str:
    """A VPC and subnet as infra/ creates them (tagged for EMR's v2 policy, private, S3 through a gateway
    endpoint), or without the tag / the endpoint, or with a route to an internet gateway."""
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.0.0/24")["Subnet"]["SubnetId"]
    if tagged:
        ec2.create_tags(Resources=[vpc, subnet], Tags=[{"Key": EMR_TAG[0], "Value": EMR_TAG[1]}])
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    if s3_endpoint:
        ec2.create_vpc_endpoint(
            VpcId=vpc,
            ServiceName=f"com.amazonaws.{region}.s3",
            VpcEndpointType="Gateway",
            RouteTableIds=[table],
        )
    if internet:
        gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)
    return subnet


def create_bucket(s3) -> None:
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_encryption(
        Bucket=BUCKET,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )


def set_emr_variables(monkeypatch, subnet_id: str | None) -> None:
    """The Variables docs/AWS.md has the operator set from the stack's outputs."""
    for name, value in {
        "FRUITS_EMR_SERVICE_ROLE": SERVICE_ROLE,
        "FRUITS_EMR_JOB_FLOW_ROLE": JOB_FLOW_ROLE,
        "FRUITS_EMR_SUBNET_ID": subnet_id,
    }.items():
        if value:
            monkeypatch.setenv(f"AIRFLOW_VAR_{name}", value)
        else:
            monkeypatch.delenv(f"AIRFLOW_VAR_{name}", raising=False)


@pytest.fixture
def aws(monkeypatch):
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        create_bucket(s3)
        set_emr_variables(monkeypatch, create_subnet())
        yield s3


@pytest.fixture
def uploaded(aws, sample_dir) -> int:
    """A few real images of three labels under uploads/dt=UPLOAD_DAY/<label>/, as `fruits upload` lays out."""
    count = 0
    for label in LABELS:
        for path in sorted((sample_dir / label).glob("*.jpg"))[:IMAGES_PER_LABEL]:
            aws.upload_file(str(path), BUCKET, f"uploads/dt={UPLOAD_DAY}/{label}/{path.name}")
            count += 1
    return count


@pytest.fixture
def runner(tmp_path, spark):
    """The cluster's steps, run on the test session's SparkSession (tests.inprocess)."""
    with EmrStepRunner(tmp_path / "emr", in_process=True) as step_runner:
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
            XComModel.get_many(run_id=dagrun.run_id, dag_ids=dagrun.dag_id, task_ids=task_id, key=key)
        ).first()
        return XComModel.deserialize_value(row) if row else None


def task_output(capfd) -> str:
    """What the tasks logged: dag.test() runs them in this process and logs to its stdout/stderr."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def step_sensor(cluster_id: str, step_ids: list[str], name: str, deferred: bool):
    """(a watch_<name> sensor, the XComs it pushes, a task instance recording them)."""
    from fruits_platform.aws.operators import FruitsStepSensor

    pushed: dict = {}

    class Ti:
        def xcom_push(self, key, value):
            pushed[key] = value

    sensor = FruitsStepSensor(
        task_id=f"watch_{name}",
        job_flow_id=cluster_id,
        step_ids=step_ids,
        step_name=name,
        region_name=REGION,
        deferrable=deferred,
    )
    return sensor, pushed, Ti()


def clusters(region: str = REGION) -> list[dict]:
    return boto3.client("emr", region_name=region).list_clusters()["Clusters"]


def keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def base_conf(weights: Path, **overrides) -> dict:
    return {
        "bucket": BUCKET,
        "weights": str(weights),
        "k": 3,
        "core_nodes": 1,
        "region": REGION,
        **QUALITY_OFF,
        **overrides,
    }


def lease_record(s3, output_uri: str, day: str = UPLOAD_DAY) -> dict | None:
    """The day's lease under ``output_uri`` (fruits_platform.lease) as stored, None if there is none."""
    from fruits_platform.lease import lease_location

    key = lease_location(output_uri, day).removeprefix(f"s3://{BUCKET}/")
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def assert_refused_before_cluster(dagrun, states, task_id: str, reason: str, output: str) -> None:
    assert dagrun.state == "failed"
    assert states[task_id] == "failed"
    assert states["create_cluster"] != "success"
    assert clusters() == []
    refusals = [line for line in output.splitlines() if "AirflowFailException: " in line]
    assert refusals, output[-3000:]
    assert reason in refusals[-1]


# -- success ----------------------------------------------------------------------------------------------
def assert_a_successful_run(dagrun, states: dict, runner, aws, emr, since: int, uploaded: int) -> None:
    """What a successful run of the day UPLOAD_DAY leaves, read with the clients ``aws`` (S3) and ``emr``.
    The success run itself is tests/test_iam_policy.py's, made as the identity holding exactly the stack's
    Airflow policy (one DAG run for both). Its steps run in process: each staged entry script as
    spark-submit runs it (tests.inprocess). Reuse of an earlier day's features from S3 is
    tests/test_backfill.py's range, whose days run the same steps."""
    from fruits_platform.aws.cluster import CLUSTER_NAME_PREFIX

    assert dagrun.state == "success", states
    assert [run.name for run in runner.runs] == list(STEP_NAMES)
    assert all(run.returncode == 0 for run in runner.runs)
    for dataset in ("images", "features", "pca", "pca_csv"):
        assert keys(aws, f"outputs/{dataset}/dt={UPLOAD_DAY}/"), dataset
    report = json.loads(aws.get_object(Bucket=BUCKET, Key="outputs/report.json")["Body"].read())
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
    features_args = xcom(dagrun, "cluster_spec")["steps"][1]["HadoopJarStep"]["Args"]
    assert features_args[features_args.index("--weights") + 1] == staged["weights_uri"]

    # one cluster for the run (another team's, named otherwise, may share the account)
    (cluster,) = [c for c in emr.list_clusters()["Clusters"] if c["Name"].startswith(CLUSTER_NAME_PREFIX)]
    assert cluster["Id"] == xcom(dagrun, "create_cluster")
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
    # the cluster existed only during this run: its billed hours fit inside the run, its cost in the bound
    run_seconds = (dagrun.end_date - dagrun.start_date).total_seconds()
    assert summary["cost"]["cluster_hours"] * 3600 <= run_seconds + 1
    assert summary["cost"]["estimated_cost_eur"] <= summary["cost"]["estimated_worst_case_eur"]
    assert summary["cost"]["estimated_worst_case_eur"] > 0
    assert summary["cost"]["budget_eur"] == 10
    assert summary["counts"]["ok"] == uploaded
    cost = json.loads(
        aws.get_object(Bucket=BUCKET, Key=f"outputs/reports/dt={UPLOAD_DAY}/cost.json")["Body"].read()
    )
    assert cost["cost"] == summary["cost"]
    for folder in ("outputs/", f"outputs/reports/dt={UPLOAD_DAY}/"):
        report = json.loads(aws.get_object(Bucket=BUCKET, Key=folder + "report.json")["Body"].read())
        assert report["cost"] == summary["cost"]
        html = aws.get_object(Bucket=BUCKET, Key=folder + "report.html")["Body"].read().decode()
        # the cost as a table, not raw JSON
        assert f"<tr><th>estimated_cost_eur</th><td>{summary['cost']['estimated_cost_eur']}</td></tr>" in html
    # the day's asset events at the real location, with what a consumer needs; the report one click away
    report = json.loads(aws.get_object(Bucket=BUCKET, Key="outputs/report.json")["Body"].read())
    for alias, dataset in (("fruits_features", "features"), ("fruits_pca", "pca")):
        events = asset_events(alias, dagrun.run_id, since)
        assert [(uri, extra["dt"], extra["rows"]) for uri, extra, _ in events] == [
            (f"s3://{BUCKET}/outputs/{dataset}", UPLOAD_DAY, uploaded)
        ]
        # the model the pca rows carry: the kept version, or provisional for a day too small to keep one
        extra = events[0][1]
        assert (extra["pca_model"], extra["pca_model_version"]) == (
            report["pca_model"],
            report["pca_model_version"] or PROVISIONAL_MODEL,
        )
    assert xcom(dagrun, "report_cost", key="report_url") == (
        f"https://{REGION}.console.aws.amazon.com/s3/object/{BUCKET}?region={REGION}&bucketType=general"
        f"&prefix=outputs/reports/dt%3D{UPLOAD_DAY}/report.html"
    )


# -- a failing step ---------------------------------------------------------------------------------------
def test_failing_features_step_fails_run_names_step_and_terminates(
    emr_dag, aws, uploaded, runner, tmp_path, capfd
):
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an HDF5 file")
    # the tensorflow engine loads the weights on the cluster (onnx refuses them at staging: next test)
    conf = base_conf(corrupt, engine="tensorflow")

    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 6, 4, tzinfo=dt.UTC))

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
    assert not [event for event in asset_events("fruits_features") if event[2] == dagrun.run_id]


def test_weights_the_onnx_export_refuses_stop_the_run_before_any_cluster(
    emr_dag, aws, uploaded, tmp_path, capfd
):
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an HDF5 file")
    dagrun, states = run_dag(emr_dag, base_conf(corrupt), dt.datetime(2026, 11, 6, 5, tzinfo=dt.UTC))
    assert_refused_before_cluster(
        dagrun,
        states,
        "stage_artifacts",
        "cannot build the onnx engine's artifact for the cluster",
        task_output(capfd),
    )


# -- guards: refused before any cluster exists -----------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "task_id", "reason", "hour"),
    [
        ({"region": "us-east-1"}, "check_gdpr", "GDPR: region us-east-1 is not in the EU allow-list", 10),
        ({"budget_eur": 0.1}, "check_budget", "exceeds budget_eur 0.1", 11),
        ({"bucket": ""}, "resolve_run", "param bucket is required", 12),
        # the node role writes under the stack's OutputPrefix (outputs/) only
        (
            {"output": "exports/"},
            "resolve_run",
            "output exports/ is outside what the EMR nodes may write",
            13,
        ),
    ],
    ids=["non-eu-region", "budget", "missing-bucket", "output-not-writable"],
)
def test_guards_refuse_before_any_cluster(
    emr_dag, aws, uploaded, random_weights, capfd, overrides, task_id, reason, hour
):
    conf = base_conf(random_weights, **overrides)
    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 6, hour, tzinfo=dt.UTC))

    assert_refused_before_cluster(dagrun, states, task_id, reason, task_output(capfd))
    assert not keys(aws, "artifacts/")  # nothing staged either


def test_bucket_in_another_eu_region_is_refused(emr_dag, aws, random_weights, capfd):
    other = boto3.client("s3", region_name="eu-central-1")
    other.create_bucket(
        Bucket="fruits-frankfurt", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )

    dagrun, states = run_dag(
        emr_dag,
        base_conf(random_weights, bucket="fruits-frankfurt"),
        dt.datetime(2026, 11, 6, 14, tzinfo=dt.UTC),
    )

    assert_refused_before_cluster(
        dagrun,
        states,
        "check_gdpr",
        "GDPR: bucket fruits-frankfurt is in eu-central-1, not in the run's region eu-west-3",
        task_output(capfd),
    )


def test_bucket_outside_eu_is_refused(emr_dag, aws, random_weights, capfd):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="fruits-virginia")

    dagrun, states = run_dag(
        emr_dag,
        base_conf(random_weights, bucket="fruits-virginia"),
        dt.datetime(2026, 11, 6, 15, tzinfo=dt.UTC),
    )

    assert_refused_before_cluster(
        dagrun, states, "check_gdpr", "GDPR: bucket fruits-virginia is in us-east-1", task_output(capfd)
    )


def test_manual_run_without_logical_date_reads_its_trigger_day(
    emr_dag, aws, sample_dir, random_weights, capfd
):
    """Airflow 3 manual runs may have no logical date (so no data interval): they read their run_after day."""
    for path in sorted((sample_dir / "lemon").glob("*.jpg"))[:4]:
        aws.upload_file(str(path), BUCKET, f"uploads/dt=2026-11-07/lemon/{path.name}")
    # stopped by the cost guard before any cluster: its message tells which images it counted
    conf = base_conf(random_weights, budget_eur=0.01)
    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 7, 9, 30, tzinfo=dt.UTC), logical_date=None)

    assert dagrun.logical_date is None
    assert xcom(dagrun, "resolve_run")["input_prefix"] == "uploads/dt=2026-11-07/"
    assert_refused_before_cluster(dagrun, states, "check_budget", "for 4 images", task_output(capfd))


@pytest.mark.parametrize("k", [0, 1281])
def test_k_out_of_range_is_refused_at_trigger(emr_dag, aws, k, random_weights):
    from airflow import settings
    from airflow.sdk.exceptions import ParamValidationError

    try:
        with pytest.raises(ParamValidationError, match="k"):
            emr_dag.test(
                run_after=dt.datetime(2026, 11, 6, 16, tzinfo=dt.UTC),
                logical_date=LOGICAL_DATE,
                run_conf=base_conf(random_weights, k=k),
            )
    finally:
        # dag.test() leaves its session mid-transaction when it raises: it would lock SQLite for the next test
        settings.Session.remove()
    assert clusters() == []


def test_no_uploads_skips_the_run_without_a_cluster(emr_dag, aws, random_weights):
    dagrun, states = run_dag(emr_dag, base_conf(random_weights), dt.datetime(2026, 11, 6, 17, tzinfo=dt.UTC))

    assert dagrun.state == "success"
    assert states["check_budget"] == "skipped"
    assert states["create_cluster"] == "skipped"
    assert clusters() == []


# -- retries never leave two clusters for one run ---------------------------------------------------------
def test_retried_create_adopts_the_cluster_of_its_run(emr_dag, aws, uploaded, random_weights):
    """An earlier try created the run's cluster then died: the next try must adopt it, not start another.

    The steps' outcome is not the point here: the sensors are marked successful without waiting."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    from fruits_platform.aws import cluster
    from fruits_spark import contract

    run_after = dt.datetime(2026, 11, 6, 5, tzinfo=dt.UTC)
    run_id = DagRun.generate_run_id(
        run_type=DagRunType.MANUAL, logical_date=LOGICAL_DATE, run_after=run_after
    )
    client = boto3.client("emr", region_name=REGION)
    # another run's cluster, still running: must be left alone
    other = client.run_job_flow(
        Name=f"{cluster.CLUSTER_NAME_PREFIX} dt=2026-11-04",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
        Tags=[{"Key": "dag_id", "Value": DAG_ID}, {"Key": "run_id", "Value": "scheduled__other"}],
    )["JobFlowId"]
    earlier = client.run_job_flow(
        Name=f"{cluster.CLUSTER_NAME_PREFIX} dt={UPLOAD_DAY}",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
        LogUri=f"s3://{BUCKET}/emr-logs/",
        Tags=[{"Key": "dag_id", "Value": DAG_ID}, {"Key": "run_id", "Value": run_id}],
    )["JobFlowId"]

    dagrun = emr_dag.test(
        run_after=run_after,
        logical_date=LOGICAL_DATE,
        run_conf=base_conf(random_weights),
        mark_success_pattern=r"watch_.*",
    )

    assert dagrun.run_id == run_id
    assert dagrun.state == "success"
    assert xcom(dagrun, "create_cluster") == earlier
    assert {c["Id"] for c in clusters()} == {other, earlier}  # no third cluster
    steps = client.list_steps(ClusterId=earlier)["Steps"]
    assert sorted(step["Name"] for step in steps) == sorted(contract.STEP_NAMES)
    assert client.list_steps(ClusterId=other)["Steps"] == []
    assert client.describe_cluster(ClusterId=earlier)["Cluster"]["Status"]["State"] == "TERMINATED"
    assert client.describe_cluster(ClusterId=other)["Cluster"]["Status"]["State"] == "WAITING"


# -- unit level: what the DAG hands to EMR ----------------------------------------------------------------
def test_emr_steps_run_the_plan_over_s3_bounded_and_in_client_mode():
    """Each EMR step: command-runner's ``timeout <limit> spark-submit --deploy-mode client`` of its staged
    entry script and the shipped zip, with the step's own flags, which its job's parser reads back."""
    from fruits_platform.aws.cluster import emr_steps
    from fruits_platform.pipeline import PipelineParams
    from fruits_spark import contract

    params = PipelineParams(
        input="s3://b/uploads/dt=2026-11-05/", output="s3://b/outputs/", dt="2026-11-05",
        weights="s3://b/artifacts/weights/x/mobilenet_v2.weights.h5", k=7, refit=True,
    )  # fmt: skip
    limits = {"ingest": 900, "features": 5400, "quality": 300, "pca": 960, "publish": 120}
    steps = emr_steps(params, "s3://b/artifacts/abc/", limits)

    assert [step["Name"] for step in steps] == ["ingest", "features", "quality", "pca", "publish"]
    for step in steps:
        name, args = step["Name"], step["HadoopJarStep"]["Args"]
        assert step["ActionOnFailure"] == "TERMINATE_CLUSTER"
        assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
        # bounded on the cluster: `timeout` ends a step past its limit, EMR marks it FAILED
        assert args[:3] == ["timeout", "--kill-after=60", f"{limits[name]}s"]
        assert args[3:6] == ["spark-submit", "--deploy-mode", "client"]
        assert "--master" not in args
        at = args.index("--py-files")
        assert args[at + 1 : at + 3] == [
            "s3://b/artifacts/abc/fruits_spark.zip",
            f"s3://b/artifacts/abc/{name}.py",
        ]
        parsed = vars(contract.step_parser(name, "").parse_args(args[at + 3 :]))
        assert (parsed["output"], parsed["dt"]) == ("s3://b/outputs/", "2026-11-05")
    pca = next(step for step in steps if step["Name"] == "pca")
    assert "--refit" in pca["HadoopJarStep"]["Args"]
    assert "--weights" not in pca["HadoopJarStep"]["Args"]


def overrides_for(instance_type="m5.xlarge", core_nodes=2, use_spot=False, engine="tensorflow", tags=None):
    from fruits_platform.aws import pricing
    from fruits_platform.aws.cluster import emr_configurations, job_flow_overrides
    from fruits_platform.aws.sizing import size_executors

    table = pricing.load_price_table()
    prices = table["instances"][instance_type]
    sizing = size_executors(instance_type, prices["vcpus"], core_nodes, engine)
    return job_flow_overrides(
        bucket="b",
        upload_day="2026-11-05",
        instance_type=instance_type,
        core_nodes=core_nodes,
        use_spot=use_spot,
        bootstrap_script_uri="s3://b/artifacts/h/install-python-deps.sh",
        requirements_uri="s3://b/artifacts/h/requirements-emr.txt",
        wheelhouse_uri="s3://b/artifacts/wheelhouse/w/",
        configurations=emr_configurations(
            json.loads((PROJECT_ROOT / "bootstrap" / "spark-env.json").read_text()), sizing
        ),
        tags=tags or {"run_id": "r"},
        job_flow_role=JOB_FLOW_ROLE,
        service_role=SERVICE_ROLE,
        subnet_id="subnet-0123456789abcdef0",
        spot_instance_types=pricing.spot_alternatives(table, instance_type),
    )


def test_job_flow_overrides_safety_nets():
    from fruits_platform.aws.bootstrap import BOOTSTRAP_TIMEOUT_SECONDS
    from fruits_platform.aws.cluster import IDLE_TIMEOUT_SECONDS

    overrides = overrides_for()

    assert overrides["AutoTerminationPolicy"] == {"IdleTimeout": IDLE_TIMEOUT_SECONDS}
    assert overrides["LogUri"] == "s3://b/emr-logs/"
    assert overrides["ReleaseLabel"].startswith("emr-7.")
    assert overrides["Instances"]["Ec2SubnetId"] == "subnet-0123456789abcdef0"
    assert (overrides["ServiceRole"], overrides["JobFlowRole"]) == (SERVICE_ROLE, JOB_FLOW_ROLE)
    primary, core = overrides["Instances"]["InstanceGroups"]
    assert (primary["Market"], primary["InstanceCount"]) == ("ON_DEMAND", 1)
    assert (core["Market"], core["InstanceCount"], core["InstanceRole"]) == ("ON_DEMAND", 2, "CORE")
    assert overrides["BootstrapActions"][0]["ScriptBootstrapAction"] == {
        "Path": "s3://b/artifacts/h/install-python-deps.sh",
        # what to install, from which wheelhouse (no index on the nodes), within what time
        "Args": [
            "s3://b/artifacts/h/requirements-emr.txt",
            "s3://b/artifacts/wheelhouse/w/",
            str(BOOTSTRAP_TIMEOUT_SECONDS),
        ],
    }
    classifications = {c["Classification"] for c in overrides["Configurations"]}
    assert {"spark-env", "emrfs-site", "spark-defaults"} <= classifications
    assert overrides["VisibleToAllUsers"] is True


def test_spot_core_fleet_spreads_over_types_capped_at_on_demand():
    from fruits_platform.aws import cost, pricing

    overrides = overrides_for(use_spot=True)
    instances = overrides["Instances"]
    assert "InstanceGroups" not in instances  # EMR cannot mix groups and fleets
    assert instances["Ec2SubnetIds"] == ["subnet-0123456789abcdef0"]
    primary, core = instances["InstanceFleets"]
    assert (primary["InstanceFleetType"], primary["TargetOnDemandCapacity"]) == ("MASTER", 1)
    assert "TargetSpotCapacity" not in primary
    assert (core["InstanceFleetType"], core["TargetSpotCapacity"]) == ("CORE", 2)
    spot = core["LaunchSpecifications"]["SpotSpecification"]
    assert spot["AllocationStrategy"] == "price-capacity-optimized"
    types = [config["InstanceType"] for config in core["InstanceTypeConfigs"]]
    assert types[0] == "m5.xlarge"
    assert len(types) >= 2
    assert all(config["BidPriceAsPercentageOfOnDemandPrice"] <= 100 for config in core["InstanceTypeConfigs"])
    # the bound prices a core node at the dearest type the fleet may launch, at its On-Demand price
    table = pricing.load_price_table()
    dearest = max(
        table["instances"][t]["ec2_on_demand_usd"] + table["instances"][t]["emr_usd"] for t in types
    )
    cap = cost.cluster_hourly_cap_eur(table, "m5.xlarge", 2, use_spot=True)
    primary_cap = (
        table["instances"]["m5.xlarge"]["ec2_on_demand_usd"] + table["instances"]["m5.xlarge"]["emr_usd"]
    )
    assert cap == pytest.approx((primary_cap + 2 * dearest) * table["usd_to_eur"])


def test_spot_alternatives_share_the_executor_shape():
    """Any type of the fleet must give the same executors (sizing) and run the same bootstrap (arch)."""
    from fruits_platform.aws import pricing, sizing

    table = pricing.load_price_table()
    for instance_type in pricing.INSTANCE_TYPES:
        alternatives = pricing.spot_alternatives(table, instance_type)
        shapes = {
            tuple(
                sizing.size_executors(t, table["instances"][t]["vcpus"], 2, "tensorflow")
                .spark_defaults()
                .items()
            )
            for t in alternatives
        }
        archs = {pricing.architecture(t) for t in alternatives}
        assert len(shapes) == 1, instance_type
        assert len(archs) == 1, instance_type


@pytest.mark.parametrize("use_spot", [False, True])
def test_volumes_in_the_request_are_those_the_cost_bound_counts(use_spot):
    from fruits_platform.aws import cluster

    overrides = overrides_for(use_spot=use_spot)
    # the venv (~1.8 GB) and pip's temporary files do not fit EMR's 15 GiB default root volume
    assert overrides["EbsRootVolumeSize"] >= 25
    instances = overrides["Instances"]
    configs = [group["EbsConfiguration"] for group in instances.get("InstanceGroups", [])] + [
        config["EbsConfiguration"]
        for fleet in instances.get("InstanceFleets", [])
        for config in fleet["InstanceTypeConfigs"]
    ]
    assert configs
    for ebs in configs:
        data = sum(
            device["VolumeSpecification"]["SizeInGB"] * device["VolumesPerInstance"]
            for device in ebs["EbsBlockDeviceConfigs"]
        )
        assert overrides["EbsRootVolumeSize"] + data == cluster.EBS_GIB_PER_INSTANCE


def spark_defaults(overrides) -> dict[str, str]:
    (defaults,) = [c for c in overrides["Configurations"] if c["Classification"] == "spark-defaults"]
    return defaults["Properties"]


def megabytes(value: str) -> int:
    assert value.endswith("m"), value
    return int(value[:-1])


@pytest.mark.parametrize("engine", ["tensorflow", "onnx"])
@pytest.mark.parametrize("instance_type", ["m5.xlarge", "m5.2xlarge", "m6i.4xlarge"])
def test_cluster_request_sizes_the_python_workers_memory(engine, instance_type):
    """YARN must reserve each Python worker's measured peak: one per executor core, outside the heap."""
    from fruits_platform.aws import sizing

    defaults = spark_defaults(overrides_for(instance_type, engine=engine))
    cores = int(defaults["spark.executor.cores"])
    heap = megabytes(defaults["spark.executor.memory"])
    overhead = megabytes(defaults["spark.executor.memoryOverhead"])
    workers_need = cores * sizing.python_worker_peak_mb(engine)

    assert cores >= 1
    # the overhead holds the workers' peak RSS with headroom, on top of the JVM's own overhead
    assert overhead - sizing.JVM_OVERHEAD_MIN_MB >= workers_need * 1.2
    # and the container still fits the node's YARN memory, or YARN would never schedule the executor
    assert heap + overhead <= sizing.yarn_memory_mb(instance_type)
    # the Python limit is not RLIMIT_AS-based (TensorFlow/ONNX Runtime map far more than they use)
    assert "spark.executor.pyspark.memory" not in defaults


def test_tensorflow_workers_leave_a_vcpu_idle_rather_than_overflow_yarn():
    """4 TensorFlow workers (2 GB peak) + the JVM exceed an xlarge's 12 GiB of YARN memory: 3 run."""
    tensorflow = spark_defaults(overrides_for("m5.xlarge", engine="tensorflow"))
    onnx = spark_defaults(overrides_for("m5.xlarge", engine="onnx"))
    assert int(tensorflow["spark.executor.cores"]) < 4 == int(onnx["spark.executor.cores"])


def test_default_parallelism_comes_from_the_declared_cluster():
    """Under dynamic allocation no executor exists when features.py sizes its partitions: the cluster's
    declared cores must be what defaultParallelism reports, not Spark's fallback of 2."""
    small = int(spark_defaults(overrides_for(core_nodes=1, engine="onnx"))["spark.default.parallelism"])
    big = int(spark_defaults(overrides_for(core_nodes=4, engine="onnx"))["spark.default.parallelism"])
    assert small >= 4  # one xlarge core node: 4 cores
    assert big == 4 * small


def inference_engine(requirements_text: str) -> str:
    """The engine a bootstrap requirements file is for, read from its pins: TensorFlow's file also holds
    onnxruntime (it can run both), so TensorFlow decides."""
    names = {
        line.split("#", 1)[0].split("==", 1)[0].strip().lower().replace("_", "-")
        for line in requirements_text.splitlines()
    }
    if names & {"tensorflow", "tensorflow-cpu"}:
        return "tensorflow"
    if "onnxruntime" in names:
        return "onnx"
    raise ValueError("the requirements install neither onnxruntime nor tensorflow")


def test_the_engine_follows_the_bootstrap_requirements():
    from fruits_spark.contract import ENGINES

    assert inference_engine("numpy==1.26.4\ntensorflow-cpu==2.21.0  # TF\n") == "tensorflow"
    assert inference_engine("onnxruntime==1.22.1\nnumpy==1.26.4\n") == "onnx"
    # the cluster staged for each engine installs that engine
    for engine, requirements in ((record.name, record.requirements) for record in ENGINES):
        assert inference_engine((PROJECT_ROOT / "bootstrap" / requirements).read_text()) == engine


def test_spark_env_json_is_used_and_encryption_added():
    from fruits_platform.aws.cluster import emr_configurations

    spark_env_file = PROJECT_ROOT / "bootstrap" / "spark-env.json"
    spark_env = json.loads(spark_env_file.read_text())
    configurations = emr_configurations(spark_env)
    assert configurations[: len(spark_env)] == spark_env
    by_classification = {c["Classification"]: c["Properties"] for c in configurations[len(spark_env) :]}
    assert by_classification["emrfs-site"] == {"fs.s3.enableServerSideEncryption": "true"}
    # the Glue Data Catalog is the metastore: spark.table("fruits.features") on the cluster
    assert by_classification["spark-hive-site"] == {
        "hive.metastore.client.factory.class": (
            "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
        )
    }


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
    # in process, the entry script runs as spark-submit would run it, with the arguments after it
    script, args = step_runner.application(command)
    assert script == str(tmp_path / "s3" / "b" / "a" / "ingest.py")
    assert args == ["--input", str(tmp_path / "s3" / "b" / "uploads") + "/", *command[-4:]]
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_cluster_left_running_fails_the_run(emr_dag, aws, uploaded, random_weights, capfd):
    """terminate_cluster 'succeeds' without terminating (marked success): report_cost must fail the run."""
    dagrun = emr_dag.test(
        run_after=dt.datetime(2026, 11, 6, 18, tzinfo=dt.UTC),
        logical_date=LOGICAL_DATE,
        run_conf=base_conf(random_weights),
        mark_success_pattern=r"watch_.*|terminate_cluster",
    )
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}

    assert states["report_cost"] == "failed"
    assert dagrun.state == "failed"
    (cluster,) = clusters()
    state = cluster["Status"]["State"]
    assert state in ("WAITING", "RUNNING")  # moto: RUNNING once steps were added
    assert f"cluster {cluster['Id']} is still {state} after terminate_cluster" in task_output(capfd)


def previous_run_reports(s3) -> dict[str, bytes]:
    """report.json files an earlier run left: the latest-run copy (another date) and this date's copy."""
    reports = {
        "outputs/report.json": {"dt": "2026-11-04", "counts": {"ok": 7}},
        f"outputs/reports/dt={UPLOAD_DAY}/report.json": {"dt": UPLOAD_DAY, "counts": {"ok": 5}},
    }
    for key, report in reports.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(report).encode())
    time.sleep(1.1)  # S3 keeps LastModified to the second: the run's cluster is created strictly later
    return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in reports}


def test_a_timed_out_sensor_still_terminates_the_cluster(emr_dag, aws, uploaded, random_weights, monkeypatch):
    """No step runner: the steps stay PENDING, the sensor's (shrunk) timeout expires, teardown still runs.
    The sensor pushes no failure XCom: the summary must still say the run failed, and no earlier run's
    report.json may receive this run's cost."""
    from fruits_platform.aws import cost

    before = previous_run_reports(aws)
    monkeypatch.setattr(cost, "sensor_timeouts", lambda limits: dict.fromkeys(limits, 3))
    dagrun, states = run_dag(emr_dag, base_conf(random_weights), dt.datetime(2026, 11, 6, 19, tzinfo=dt.UTC))

    assert states["watch_ingest"] == "failed"
    assert states["terminate_cluster"] == "success"
    assert dagrun.state == "failed"
    (cluster,) = clusters()
    assert cluster["Status"]["State"] == "TERMINATED"
    summary = xcom(dagrun, "report_cost")
    assert summary["succeeded"] is False
    assert (summary["failure"]["step"], summary["failure"]["state"]) == ("ingest", "failed")
    assert summary["steps"]["watch_ingest"] == "failed"
    for key, body in before.items():
        assert aws.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body, key


def test_steps_marked_successful_do_not_price_an_earlier_report(emr_dag, aws, uploaded, random_weights):
    """Sensors marked success by hand, no Spark job ran: the report.json files in S3 are older runs' (one of
    another date, one of this date written before the cluster existed): neither gets this run's cost."""
    before = previous_run_reports(aws)
    dagrun = emr_dag.test(
        run_after=dt.datetime(2026, 11, 6, 23, tzinfo=dt.UTC),
        logical_date=LOGICAL_DATE,
        run_conf=base_conf(random_weights),
        mark_success_pattern=r"watch_.*",
    )

    summary = xcom(dagrun, "report_cost")
    assert summary["succeeded"] is True
    assert "counts" not in summary
    for key, body in before.items():
        assert aws.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body, key
    assert aws.get_object(Bucket=BUCKET, Key=f"outputs/reports/dt={UPLOAD_DAY}/cost.json")
    # the run held its day from before its cluster until after its report, for the cluster's longest life
    from fruits_platform.aws.tasks import lease_ttl

    (taken,) = xcom(dagrun, "take_lease")
    assert (taken["holder"], taken["dt"]) == (f"{DAG_ID}/{dagrun.run_id}", UPLOAD_DAY)
    held = dt.datetime.fromisoformat(taken["expires"]) - dt.datetime.fromisoformat(taken["since"])
    assert held.total_seconds() == lease_ttl(xcom(dagrun, "check_budget", "estimate"))
    record = lease_record(aws, xcom(dagrun, "resolve_run")["output_uri"])
    assert record["token"] == taken["token"]
    assert record["released"]  # given back once the report was written


def test_a_day_another_run_holds_fails_the_run_at_once_naming_it(
    emr_dag, aws, uploaded, random_weights, capfd, monkeypatch
):
    """A backfill range holds the day (its lease, as fruits_features_emr_backfill takes it): the daily run
    fails before its cluster, naming that run, and leaves its lease alone."""
    from fruits_platform import lease
    from fruits_platform.aws import cost
    from fruits_platform.aws.settings import DEFAULT_OUTPUT_PREFIX

    # a run that is not refused fails in seconds (no step runs here) instead of waiting for its limits
    monkeypatch.setattr(cost, "sensor_timeouts", lambda limits: dict.fromkeys(limits, 3))
    output = f"s3://{BUCKET}/{DEFAULT_OUTPUT_PREFIX}"
    other = lease.acquire(output, UPLOAD_DAY, "fruits_features_emr_backfill/manual__range", s3=aws)
    conf = base_conf(random_weights, output=DEFAULT_OUTPUT_PREFIX)
    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 6, 20, tzinfo=dt.UTC))

    assert_refused_before_cluster(
        dagrun,
        states,
        "take_lease",
        f"dt={UPLOAD_DAY} of {output} is being written by fruits_features_emr_backfill/manual__range "
        f"(host {other.host}, pid {other.pid}) since {other.since}; its lease ends at {other.expires}",
        task_output(capfd),
    )
    assert states["release_lease"] != "success"
    assert lease_record(aws, output) == other.record()  # still the range's, not released by the refused run


# -- unit level: staging and the sensor's failure report --------------------------------------------------
def test_staging_uploads_once_and_checks_weights(aws, tmp_path, random_weights):
    from fruits_platform.aws import staging

    first = staging.stage_artifacts(aws, BUCKET, str(random_weights), 224, tmp_path / "one")
    again = staging.stage_artifacts(aws, BUCKET, str(random_weights), 224, tmp_path / "two")

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


def test_imagenet_weights_are_downloaded_once_per_input_size(aws, tmp_path, monkeypatch, random_weights):
    from fruits_platform.aws import staging

    downloads = []

    def fake_download(input_size, destination):  # stands for the Keras download (no internet here)
        downloads.append(input_size)
        return Path(shutil.copyfile(random_weights, destination / staging.WEIGHTS_NAME))

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

    from fruits_platform.aws.operators import FruitsStepSensor

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws"}))
    emr = boto3.client("emr", region_name=REGION)
    cluster_id = emr.run_job_flow(
        Name="fruits-features dt=x",
        LogUri=f"s3n://{BUCKET}/emr-logs/",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
    )["JobFlowId"]
    step_ids = emr.add_job_flow_steps(
        JobFlowId=cluster_id,
        Steps=[
            {"Name": n, "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}} for n in STEP_NAMES
        ],
    )["StepIds"]
    features_at, pca_at = STEP_NAMES.index("features"), STEP_NAMES.index("pca")
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id].steps[pca_at].state = "CANCELLED"
    aws.put_object(
        Bucket=BUCKET,
        Key=f"emr-logs/{cluster_id}/steps/{step_ids[features_at]}/stderr.gz",
        Body=gzip.compress(b"noise\nfeatures: cannot load weights from s3://x: bad\nmore noise\n"),
    )
    sensor, pushed, ti = step_sensor(cluster_id, step_ids, "features", deferred=True)
    emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id].steps[features_at].state = "FAILED"
    with pytest.raises(AirflowFailException) as failed:
        sensor.execute_complete({"ti": ti}, event={"status": "failure", "message": "Step failed"})

    # s3n:// read back as s3://
    log = f"s3://{BUCKET}/emr-logs/{cluster_id}/steps/{step_ids[features_at]}/stderr.gz"
    reason = "features: cannot load weights from s3://x: bad"
    assert str(failed.value) == f"step features FAILED on cluster {cluster_id}: {reason}; log: {log}"
    assert pushed["failure"]["log"] == log

    pca = FruitsStepSensor(
        task_id="watch_pca", job_flow_id=cluster_id, step_ids=step_ids, step_name="pca", region_name=REGION
    )
    pca._resolve_step()
    cancelled = pca.describe_failure(emr.describe_step(ClusterId=cluster_id, StepId=step_ids[pca_at]))
    assert cancelled["message"].startswith(f"step pca CANCELLED on cluster {cluster_id}: cluster RUNNING")
    assert cancelled["log"] == f"s3://{BUCKET}/emr-logs/{cluster_id}/"


# -- what must exist in the account: refused before any cluster --------------------------------------------
@pytest.mark.parametrize(
    ("subnet", "reason", "hour"),
    [
        ({"tagged": False}, "lack the tag for-use-with-amazon-emr-managed-policies=true", 20),
        # a public subnet, as this stack used to create: the nodes could reach the internet
        ({"internet": True}, "reaches the internet (0.0.0.0/0 -> igw-", 21),
        ({"s3_endpoint": False}, "has no route to an S3 gateway endpoint", 22),
    ],
    ids=["untagged", "internet", "no-s3-endpoint"],
)
def test_unusable_subnet_is_refused_before_any_cluster(
    emr_dag, aws, uploaded, random_weights, capfd, monkeypatch, subnet, reason, hour
):
    """A subnet EMR's v2 policy cannot launch in, one that reaches the internet, or one the nodes could not
    reach S3 from fails check_gdpr, not the cluster."""
    set_emr_variables(monkeypatch, create_subnet(**subnet))
    dagrun, states = run_dag(
        emr_dag, base_conf(random_weights), dt.datetime(2026, 11, 7, hour, tzinfo=dt.UTC)
    )

    assert_refused_before_cluster(dagrun, states, "check_gdpr", reason, task_output(capfd))


def test_unset_role_and_subnet_variables_are_refused_at_once(
    emr_dag, aws, uploaded, random_weights, capfd, monkeypatch
):
    """No fallback to EMR_DefaultRole (which the stack cannot pass): the refusal names what to set."""
    monkeypatch.delenv("AIRFLOW_VAR_FRUITS_EMR_SERVICE_ROLE")
    monkeypatch.delenv("AIRFLOW_VAR_FRUITS_EMR_SUBNET_ID")
    dagrun, states = run_dag(emr_dag, base_conf(random_weights), dt.datetime(2026, 11, 7, 22, tzinfo=dt.UTC))

    reason = "Airflow Variable(s) fruits_emr_service_role, fruits_emr_subnet_id not set"
    assert_refused_before_cluster(dagrun, states, "resolve_run", reason, task_output(capfd))


# -- a cluster that ended with errors ---------------------------------------------------------------------
def moto_cluster(cluster_id: str):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    return emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id]


def start_cluster(steps: int = 0) -> tuple[str, list[str]]:
    client = boto3.client("emr", region_name=REGION)
    cluster_id = client.run_job_flow(
        Name="fruits-features dt=x",
        LogUri=f"s3n://{BUCKET}/emr-logs/",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
        Tags=[{"Key": "project", "Value": "fruits"}],
    )["JobFlowId"]
    step_ids = []
    if steps:
        step_ids = client.add_job_flow_steps(
            JobFlowId=cluster_id,
            Steps=[
                {"Name": n, "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}
                for n in ("ingest", "features", "pca")[:steps]
            ],
        )["StepIds"]
    return cluster_id, step_ids


# the event EmrTerminateJobFlowTrigger yields when its waiter meets TERMINATED_WITH_ERRORS (the provider's
# AwsBaseWaiterTrigger._event_from_exception shape: status "error" and the waiter's message)
TERMINATE_TRIGGER_FAILURE = {
    "status": "error",
    "message": "JobFlow termination failed: TERMINATED_WITH_ERRORS - STEP_FAILURE - Shut down as step "
    "failed\nWaiter job_flow_terminated failed: Waiter encountered a terminal failure state",
}


@pytest.mark.parametrize("ended", ["TERMINATED_WITH_ERRORS", "TERMINATED"])
def test_deferred_terminate_accepts_a_cluster_that_ended_with_errors(aws, monkeypatch, ended):
    """Deferrable mode (docker-compose): after a failed step's TERMINATE_CLUSTER the trigger reports a
    failure; the teardown must still succeed since the cluster is gone."""
    from fruits_platform.aws.operators import FruitsTerminateJobFlowOperator

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws"}))
    cluster_id, _ = start_cluster()
    cluster = moto_cluster(cluster_id)
    cluster.state = ended
    cluster.last_state_change_reason = "Shut down as step failed"
    operator = FruitsTerminateJobFlowOperator(
        task_id="terminate_cluster", job_flow_id=cluster_id, region_name=REGION, deferrable=True
    )

    operator.execute_complete({}, event=TERMINATE_TRIGGER_FAILURE)  # no exception
    operator.execute_complete({}, event={"status": "success"})


def test_deferred_terminate_still_fails_on_a_cluster_left_running(aws, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    from fruits_platform.aws.operators import FruitsTerminateJobFlowOperator

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws"}))
    cluster_id, _ = start_cluster()
    operator = FruitsTerminateJobFlowOperator(
        task_id="terminate_cluster", job_flow_id=cluster_id, region_name=REGION, deferrable=True
    )
    timed_out = {"status": "error", "message": "JobFlow termination failed: max attempts reached"}
    with pytest.raises(AirflowException, match=f"cluster {cluster_id} is still WAITING"):
        operator.execute_complete({}, event=timed_out)


def test_the_provider_waiter_still_treats_terminated_with_errors_as_failure():
    """Why FruitsTerminateJobFlowOperator exists: if a provider upgrade changes this, the subclass can go."""
    waiters = (
        PROJECT_ROOT / ".venv/lib/python3.11/site-packages/airflow/providers/amazon/aws/waiters/emr.json"
    )
    if not waiters.exists():
        from airflow.providers.amazon.aws import waiters as package

        waiters = Path(package.__file__).parent / "emr.json"
    acceptors = json.loads(waiters.read_text())["waiters"]["job_flow_terminated"]["acceptors"]
    assert {"expected": "TERMINATED_WITH_ERRORS", "state": "failure"}.items() <= next(
        a for a in acceptors if a["expected"] == "TERMINATED_WITH_ERRORS"
    ).items()


@pytest.mark.parametrize("deferred", [False, True])
def test_sensor_on_a_cluster_terminated_with_errors_names_the_cluster_failure(aws, monkeypatch, deferred):
    """Bootstrap failure: EMR cancels every step and ends the cluster TERMINATED_WITH_ERRORS. Both sensor
    paths (poke, and the trigger's failure event) fail at once with the cluster's reason and its logs."""
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws"}))
    cluster_id, step_ids = start_cluster(steps=3)
    cluster = moto_cluster(cluster_id)
    for step in cluster.steps:
        step.state = "CANCELLED"
    cluster.state = "TERMINATED_WITH_ERRORS"
    cluster.last_state_change_reason = (
        "On the master instance: bootstrap action 1 returned a non-zero return code"
    )
    sensor, pushed, ti = step_sensor(cluster_id, step_ids, "ingest", deferred)
    sensor._resolve_step()  # what execute() does first
    if deferred:
        check = partial(sensor.execute_complete, {"ti": ti}, event={"status": "failure", "message": "failed"})
    else:
        check = partial(sensor.poke, {"ti": ti})
    with pytest.raises(AirflowFailException) as failed:
        check()
    message = str(failed.value)
    assert message.startswith(
        f"step ingest CANCELLED on cluster {cluster_id}: cluster TERMINATED_WITH_ERRORS"
    )
    assert "bootstrap action 1 returned a non-zero return code" in message
    assert pushed["failure"]["log"] == f"s3://{BUCKET}/emr-logs/{cluster_id}/"
