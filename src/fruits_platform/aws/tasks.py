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
from airflow.sdk import Variable, conf, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from fruits_platform import lease
from fruits_platform.aws import bootstrap, cluster, gdpr, operators, staging
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.settings import VAR_SUBNET_ID, VARIABLES, RunSettings

AWS_CONN_ID: str = cluster.AWS_CONN_ID
# docker-compose sets AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=true (triggerer); tests run without deferral
DEFERRABLE: bool = conf.getboolean("operators", "default_deferrable", fallback=False)
# the region every AWS task of a run works in: its ``region`` param, rendered when the task runs
REGION = "{{ params.region }}"
# A day's lease outlives the longest life of the cluster that writes the day by this much: create_cluster's
# tries before it, report and release after it
LEASE_MARGIN_SECONDS = 1800


def poke_seconds() -> float:
    """Seconds between two looks at the cluster. Read when a DAG file is parsed, not when this module is
    first imported: a DagBag parsed later with FRUITS_EMR_POKE_SECONDS set (a test, a demo) gets it."""
    return float(os.environ.get("FRUITS_EMR_POKE_SECONDS", "60"))


# Below this poke interval a sensor keeps its worker slot between looks (mode "poke")
RESCHEDULE_FROM_SECONDS = 30.0


def sensor_mode(seconds: float) -> str:
    """How a non-deferred sensor waits between looks ``seconds`` apart. At the production minute it gives its
    worker slot back ("reschedule"): a run holds no slot for its hour on EMR. At a test's or a demo's second,
    a reschedule would start the task again every second, which costs more than the slot it frees (Airflow
    keeps reschedule mode for long poke intervals); there it sleeps in place ("poke")."""
    return "reschedule" if seconds >= RESCHEDULE_FROM_SECONDS else "poke"


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


def lease_ttl(estimate: dict) -> int:
    """How long a run's leases hold: the longest its cluster can live (start-up limit, every step's limit,
    idle timeout and termination, each enforced on the cluster: ``cost.CostEstimate.hours``) + the margin.
    Past it, no cluster of that run can write any more: a crashed run's lease may be taken over."""
    return round(float(estimate["hours"]) * 3600) + LEASE_MARGIN_SECONDS


def take_leases(run: RunSettings, days: list[str], estimate: dict, holder: str) -> list[dict]:
    """The lease (fruits_platform.lease) of every day the run writes, all or none: a day another run holds
    fails the run at once, naming that run, and gives back the days taken before it. ``holder``: this run,
    whose own earlier try's lease is taken over (a cleared or retried run)."""
    s3, ttl = aws_client("s3", run.region), lease_ttl(estimate)
    taken: list[lease.Lease] = []
    try:
        for day in days:
            taken.append(lease.acquire(run.output_uri, day, holder, ttl_seconds=ttl, retake=True, s3=s3))
    except lease.LeaseHeld as held:
        for each in taken:
            each.release()
        raise AirflowFailException(f"{held} (no cluster was started)") from None
    for each in taken:
        print(f"lease {each.location}: {each.holder} until {each.expires}")
        if each.taken_over:
            print(each.taken_over)
    return [each.as_dict() for each in taken]


def release_leases(run: RunSettings, leases: list[dict], cluster_id: str | None) -> list[str]:
    """Gives the run's days back once its outputs are published, whether it succeeded or not; returns the
    days released. Not while its cluster may still write (one left running: the leases expire after the
    cluster's longest life), and never a lease another run holds now (``Lease.release``)."""
    if cluster_id:
        state = aws_client("emr", run.region).describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
        if state["State"] in cluster.ACTIVE_CLUSTER_STATES:
            print(f"cluster {cluster_id} is still {state['State']}: its days keep their leases, which expire")
            return []
    s3 = aws_client("s3", run.region)
    released = []
    for values in leases:
        held = lease.Lease.from_dict(values, s3=s3)
        if held.release():
            print(f"lease {held.location} released")
            released.append(held.dt)
    return released


def lease_tasks(settings, estimate, days=None) -> tuple:
    """``take_lease`` and ``release_lease`` of an EMR DAG: the leases of ``days`` (default: the run's day),
    taken by the run ``<dag_id>/<run_id>`` for ``lease_ttl(estimate)``, then given back. The DAG places
    them: taken just before create_cluster, released as the last teardown."""

    @task(task_id="take_lease")
    def take_lease(settings: dict, estimate: dict, days: list | None) -> list:
        """One writer per day: the run's days are its own until release_lease, or it fails at once."""
        context = get_current_context()
        holder = f"{context['dag'].dag_id}/{context['run_id']}"
        run = RunSettings.from_dict(settings)
        return take_leases(run, list(days or [run.dt]), estimate, holder)

    @task(task_id="release_lease")
    def release_lease(settings: dict, leases: list) -> list:
        """Teardown after the report: the days back to whoever runs them next, even if this run failed.
        As the run's last leaf it carries the report's failure on (a cluster left running): the report is
        no leaf any more, and the run's state follows its leaves."""
        ti = get_current_context()["ti"]
        cluster_id = ti.xcom_pull(task_ids="create_cluster")
        released = release_leases(RunSettings.from_dict(settings), leases, cluster_id)
        reports = [task for task in ti.task.upstream_task_ids if task.startswith("report_")]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=reports, run_ids=[ti.run_id])
        failed = sorted(task for task, state in states.get(ti.run_id, {}).items() if state == "failed")
        if failed:
            raise AirflowFailException(f"{', '.join(failed)} failed: see its log (leases: {released})")
        return released

    taken = take_lease(settings, estimate, days)
    return taken, release_lease(settings, taken)
