"""The task bodies both EMR DAGs share (``fruits_features_emr``, ``fruits_features_emr_backfill``): the AWS
clients from the Airflow connection, the Variables, the placement guard and the staging, so that each DAG
file only wires its tasks."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator
from airflow.sdk import Variable, conf
from airflow.sdk.exceptions import AirflowFailException

from fruits_platform.aws import bootstrap, cluster, gdpr, operators, staging
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.settings import VAR_SUBNET_ID, VARIABLES, RunSettings

AWS_CONN_ID: str = cluster.AWS_CONN_ID
# docker-compose sets AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=true (triggerer); tests run without deferral
DEFERRABLE: bool = conf.getboolean("operators", "default_deferrable", fallback=False)
# the region every AWS task of a run works in: its ``region`` param, rendered when the task runs
REGION = "{{ params.region }}"


def poke_seconds() -> float:
    """Seconds between two looks at the cluster. Read when a DAG file is parsed, not when this module is
    first imported: a DagBag parsed later with FRUITS_EMR_POKE_SECONDS set (a test, a demo) gets it."""
    return float(os.environ.get("FRUITS_EMR_POKE_SECONDS", "60"))


def aws_client(service: str, region: str):
    return AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type=service, region_name=region).conn


def variables() -> dict[str, str | None]:
    """The DAGs' Airflow Variables, None when unset or empty (docker-compose passes unset ones as empty)."""
    return {key: (Variable.get(key, default=None) or "").strip() or None for key in VARIABLES}


def check_placement(run: RunSettings) -> str:
    """Placement guard, before anything is created: EU region, bucket in it and encrypted, a subnet EMR can
    launch in, with no way to the internet and an S3 gateway endpoint. Returns the bucket's encryption."""
    try:
        algorithm, endpoint = gdpr.check_gdpr(
            aws_client("s3", run.region),
            aws_client("ec2", run.region),
            run.bucket,
            run.region,
            run.subnet_id,
            VAR_SUBNET_ID,
        )
    except GuardRefused as refusal:
        raise AirflowFailException(str(refusal)) from None
    print(f"GDPR checks passed: {run.region}, bucket {run.bucket} ({algorithm})")
    print(f"subnet {run.subnet_id} tagged for EMR, no route to the internet, S3 through {endpoint}")
    return algorithm


def stage_run(run: RunSettings) -> dict:
    """Code, bootstrap, the wheelhouse for the nodes' architecture and the weights to S3, once per content."""
    pipeline = run.pipeline  # validated when the run was resolved
    try:
        with tempfile.TemporaryDirectory(prefix="fruits-stage-") as scratch:
            staged = staging.stage_artifacts(
                aws_client("s3", run.region),
                run.bucket,
                pipeline["weights"],
                pipeline["input_size"],
                Path(scratch),
                pipeline["engine"],
                bootstrap.architecture(run.instance_type),
            )
    except staging.StagingError as error:
        raise AirflowFailException(str(error)) from None
    print(
        f"artifacts {staged.artifacts_uri}: {len(staged.uploaded)} uploaded, {len(staged.skipped)} "
        f"already there; wheelhouse {staged.wheelhouse_uri}; weights {staged.weights_uri}"
    )
    return staged.as_dict()


def cluster_tasks(spec) -> tuple:
    """``create_cluster``, ``add_steps`` and ``terminate_cluster`` of an EMR DAG, in the DAG being defined:
    the run's cluster from ``spec["job_flow_overrides"]`` (an earlier try's cluster is adopted), its
    ``spec["steps"]``, and the teardown that always ends it, all in the run's region."""
    create_cluster = operators.FruitsCreateJobFlowOperator(
        task_id="create_cluster",
        job_flow_overrides=spec["job_flow_overrides"],
        emr_conn_id=None,
        aws_conn_id=AWS_CONN_ID,
        region_name=REGION,
        wait_for_completion=False,
        terminate_job_flow_on_failure=True,
        deferrable=DEFERRABLE,
        retries=2,
        retry_delay=dt.timedelta(seconds=30),
    )
    add_steps = EmrAddStepsOperator(
        task_id="add_steps",
        job_flow_id=create_cluster.output,
        steps=spec["steps"],
        aws_conn_id=AWS_CONN_ID,
        region_name=REGION,
        wait_for_completion=False,
        deferrable=False,  # adding is instant; sensors wait for the steps
    )
    terminate_cluster = operators.FruitsTerminateJobFlowOperator(
        task_id="terminate_cluster",
        job_flow_id=create_cluster.output,
        aws_conn_id=AWS_CONN_ID,
        region_name=REGION,
        deferrable=DEFERRABLE,
        retries=3,
        retry_delay=dt.timedelta(seconds=30),
    )
    return create_cluster, add_steps, terminate_cluster
