"""The deferrable path for real: the operators defer, their provider triggers run their async ``run()``
(aiobotocore, as in Airflow's triggerer) against moto's server on 127.0.0.1, and the event they yield is
what ``execute_complete`` gets. Nothing here hands an event in by hand."""

from __future__ import annotations

import asyncio
import json
import socket

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from tests.test_dag_emr import REGION

STEP_NAMES = ("ingest", "features", "pca")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def moto_server(monkeypatch):
    """moto's server on a free local port, the aws_default connection pointing at it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "extra": {"region_name": REGION, "endpoint_url": endpoint}}),
    )
    try:
        yield endpoint
    finally:
        server.stop()


def moto_cluster(cluster_id: str):
    """The server's record of a cluster (moto's server files EMR requests under a region of its own)."""
    from moto.emr.models import emr_backends

    backends = emr_backends[DEFAULT_ACCOUNT_ID]
    return next(b.clusters[cluster_id] for b in backends.values() if cluster_id in b.clusters)


def start_cluster(endpoint: str) -> tuple[str, list[str]]:
    emr = boto3.client("emr", region_name=REGION, endpoint_url=endpoint)
    cluster_id = emr.run_job_flow(
        Name="fruits-features test",
        Instances={"KeepJobFlowAliveWhenNoSteps": True},
        Tags=[{"Key": "project", "Value": "fruits"}],
    )["JobFlowId"]
    step_ids = emr.add_job_flow_steps(
        JobFlowId=cluster_id,
        Steps=[
            {"Name": n, "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}} for n in STEP_NAMES
        ],
    )["StepIds"]
    return cluster_id, step_ids


def deferred_trigger(operator, context):
    """Runs the operator's execute() until it defers; returns the trigger and the resume method's name."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    with pytest.raises(TaskDeferred) as deferral:
        operator.execute(context)
    return deferral.value.trigger, deferral.value.method_name


def first_event(trigger) -> dict:
    """What the triggerer does: iterate the trigger's async run() until it yields its event."""

    async def run() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


class Ti:
    def __init__(self) -> None:
        self.pushed: dict = {}

    def xcom_push(self, key, value) -> None:
        self.pushed[key] = value


@pytest.mark.parametrize("ended", ["TERMINATED", "TERMINATED_WITH_ERRORS"])
def test_terminate_trigger_runs_and_the_teardown_accepts_an_ended_cluster(moto_server, ended):
    from fruits_platform.aws.operators import FruitsTerminateJobFlowOperator

    cluster_id, _ = start_cluster(moto_server)
    operator = FruitsTerminateJobFlowOperator(
        task_id="terminate_cluster",
        job_flow_id=cluster_id,
        region_name=REGION,
        deferrable=True,
        waiter_delay=1,
        waiter_max_attempts=30,
    )
    trigger, method = deferred_trigger(operator, {})
    if ended == "TERMINATED_WITH_ERRORS":
        # a failed step's TERMINATE_CLUSTER ended it before the teardown (AWS leaves an ended cluster's
        # state as it is; moto's TerminateJobFlows overwrites it, hence set after the call): the provider's
        # waiter calls that a terminal failure, the teardown must not
        cluster = moto_cluster(cluster_id)
        cluster.state = ended
        cluster.last_state_change_reason = "Shut down as step failed"
    event = first_event(trigger)
    assert event["status"] == ("success" if ended == "TERMINATED" else "error"), event

    getattr(operator, method)({}, event=event)  # no exception: the cluster is gone either way
    state = boto3.client("emr", region_name=REGION, endpoint_url=moto_server).describe_cluster(
        ClusterId=cluster_id
    )["Cluster"]["Status"]["State"]
    assert state == ended


@pytest.mark.parametrize("outcome", ["COMPLETED", "FAILED"])
def test_step_sensor_trigger_runs_until_the_step_ends(moto_server, outcome):
    from airflow.sdk.exceptions import AirflowFailException

    from fruits_platform.aws.operators import FruitsStepSensor

    cluster_id, step_ids = start_cluster(moto_server)
    sensor = FruitsStepSensor(
        task_id="watch_features",
        job_flow_id=cluster_id,
        step_ids=step_ids,
        step_name="features",
        region_name=REGION,
        deferrable=True,
        poke_interval=1,
        timeout_seconds=60,
    )
    ti = Ti()
    trigger, method = deferred_trigger(sensor, {"ti": ti})  # moto's steps stay PENDING: it defers
    assert trigger.waiter_args == {"ClusterId": cluster_id, "StepId": step_ids[1]}
    step = next(s for s in moto_cluster(cluster_id).steps if s.id == step_ids[1])
    step.state = outcome  # the cluster finishes the step while the trigger polls
    event = first_event(trigger)
    assert event["status"] == ("success" if outcome == "COMPLETED" else "error"), event

    resume = getattr(sensor, method)
    if outcome == "COMPLETED":
        resume({"ti": ti}, event=event)
        assert "failure" not in ti.pushed
    else:
        with pytest.raises(AirflowFailException, match=f"step features FAILED on cluster {cluster_id}"):
            resume({"ti": ti}, event=event)
        assert ti.pushed["failure"]["step"] == "features"
