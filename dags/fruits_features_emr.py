"""
### fruits_features_emr: the feature pipeline on a transient EMR cluster

The same three Spark steps as `fruits_features_local` (**ingest** → **features** → **pca**, defined once in
`fruits_platform.steps`), submitted as EMR steps to a cluster created for this run and terminated after it.

Runs daily at 02:00 UTC; each run processes the uploads of its data interval, `uploads/dt=YYYY-MM-DD/`
(`fruits upload` puts them there). A manual run without a logical date processes the day it was triggered.

| task | what it does |
| --- | --- |
| `check_gdpr` | region in the EU allow-list, bucket in that region with default encryption, params sane |
| `check_budget` | counts the input images, estimates the worst-case cost, refuses above `budget_eur` |
| `stage_artifacts` | code, bootstrap and weights to `s3://<bucket>/artifacts/<content hash>/` (SSE) |
| `create_cluster` | the run's cluster (reuses the one an earlier try created) |
| `add_steps` | ingest, features, pca as `spark-submit` steps |
| `watch_<step>` | waits for one step; a failure names the step and its log |
| `terminate_cluster` | teardown: always terminates the cluster, whatever happened |
| `report_cost` | teardown: cluster hours and estimated cost, the run summary (XCom) |

Params: `bucket` (empty: Variable `fruits_bucket`), `input_prefix` (empty: the day's uploads),
`output_prefix`, `k`, `weights` (`imagenet`, `s3://...` or a path on the worker), `instance_type`,
`core_nodes`, `use_spot`, `region`, `budget_eur`, `refit`, `input_size`, `recompute`.
Set up, costs and failure modes: `docs/AWS.md`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator, EmrTerminateJobFlowOperator
from airflow.sdk import (
    DAG,
    CronDataIntervalTimetable,
    Param,
    Variable,
    chain,
    conf,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from botocore.exceptions import BotoCoreError, ClientError

from fruits_platform import emr, guards, pricing, staging
from fruits_platform.run_report import add_cost_to_report
from fruits_platform.steps import K_RANGE, STEP_NAMES, PipelineParams

DAG_ID = "fruits_features_emr"
AWS_CONN_ID: str = emr.AWS_CONN_ID
# daily data intervals [D-1 02:00, D 02:00) UTC: the run of day D processes uploads/dt=D-1/
SCHEDULE = CronDataIntervalTimetable("0 2 * * *", timezone="UTC")
# docker-compose sets AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=true (triggerer); tests run without deferral
DEFERRABLE: bool = conf.getboolean("operators", "default_deferrable", fallback=False)
POKE_SECONDS: float = float(os.environ.get("FRUITS_EMR_POKE_SECONDS", "60"))
INPUT_SIZES = [96, 128, 160, 192, 224]

VAR_BUCKET = "fruits_bucket"
VAR_PRICE_TABLE = "fruits_price_table"
VAR_JOB_FLOW_ROLE = "fruits_emr_job_flow_role"
VAR_SERVICE_ROLE = "fruits_emr_service_role"
VAR_SUBNET_ID = "fruits_emr_subnet_id"
VAR_SECURITY_CONFIGURATION = "fruits_emr_security_configuration"

PARAMS = {
    "bucket": Param(
        "",
        type="string",
        pattern=r"^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        title="S3 bucket",
        description="Holds uploads/, artifacts/, emr-logs/ and the outputs; must be in `region`. "
        "Empty: the Airflow Variable fruits_bucket (what scheduled runs use).",
    ),
    "input_prefix": Param(
        "",
        type="string",
        title="Input prefix",
        description="Images to process, one sub-folder per label. Empty: uploads/dt=<upload date>/.",
    ),
    "output_prefix": Param("features/", type="string", pattern=r"^[^/].*/$", title="Output prefix"),
    "k": Param(100, type="integer", minimum=K_RANGE[0], maximum=K_RANGE[1], title="PCA components"),
    "weights": Param(
        "imagenet",
        type="string",
        minLength=1,
        title="Model weights",
        description="imagenet (downloaded once by the staging task), an s3:// URI, or the path of a "
        ".weights.h5 file on the Airflow worker (staged to S3).",
    ),
    "instance_type": Param(
        "m5.xlarge", type="string", enum=list(pricing.INSTANCE_TYPES), title="Instance type"
    ),
    "core_nodes": Param(2, type="integer", minimum=0, maximum=20, title="Core nodes"),
    "use_spot": Param(False, type="boolean", title="Spot core nodes"),
    "region": Param(
        "eu-west-3",
        type="string",
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
        title="AWS region",
        description="Must be an EU region (GDPR guard), the bucket's region, and the aws_default "
        "connection's region_name extra.",
    ),
    "budget_eur": Param(
        10,
        type="number",
        minimum=0,
        title="Budget (EUR)",
        description="The run is refused if its worst-case cost estimate exceeds this.",
    ),
    "refit": Param(False, type="boolean", title="Refit the PCA model"),
    "recompute": Param(False, type="boolean", title="Recompute every feature (reuse none)"),
    "input_size": Param(224, type="integer", enum=INPUT_SIZES, title="Model input size"),
}


def variable(key: str) -> str | None:
    """An Airflow Variable, None when unset or empty (docker-compose passes unset ones as empty)."""
    return (Variable.get(key, default=None) or "").strip() or None


def aws_client(service: str, region: str):
    return AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type=service, region_name=region).conn


def refuse(reason: str) -> AirflowFailException:
    """A refusal: the task fails at once (no retry) with a one-line reason."""
    return AirflowFailException(reason)


def encryption_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ServerSideEncryptionConfigurationNotFoundError":
            return []
        raise


def check_subnet(subnet_id: str | None, region: str) -> None:
    """The subnet the cluster will use (Variable fruits_emr_subnet_id), if any, exists in ``region``."""
    if not subnet_id:
        return
    try:
        aws_client("ec2", region).describe_subnets(SubnetIds=[subnet_id])
    except (ClientError, BotoCoreError) as error:
        raise guards.GuardRefused(
            f"subnet {subnet_id} (Variable {VAR_SUBNET_ID}) not usable in {region}: {error}"
        ) from None


def wait_for_termination(client, cluster_id: str, attempts: int = 20) -> dict:
    """The cluster once terminated (its timeline then has an EndDateTime), or as it is if that is not coming:
    still active a few polls after terminate_cluster, the termination never took effect."""
    delay = min(POKE_SECONDS, 30)
    for attempt in range(attempts):
        cluster = client.describe_cluster(ClusterId=cluster_id)["Cluster"]
        state = cluster["Status"]["State"]
        if state in ("TERMINATED", "TERMINATED_WITH_ERRORS") or (
            state in emr.ACTIVE_CLUSTER_STATES and attempt >= 2
        ):
            return cluster
        time.sleep(delay)
    return cluster


with DAG(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["fruits", "emr"],
    default_args={"retries": 0},
) as dag:

    @task
    def check_gdpr() -> dict:
        """GDPR guard, before anything is created: EU region, bucket in it and encrypted, sane params."""
        context = get_current_context()
        params = context["params"]
        upload_day = guards.upload_date(
            context.get("data_interval_start"), context.get("logical_date"), context["dag_run"].run_after
        )
        try:
            bucket = guards.require_bucket(params["bucket"] or variable(VAR_BUCKET))
            region = guards.check_region(params["region"])
            PipelineParams("in", "out", upload_day, k=int(params["k"]), input_size=int(params["input_size"]))
            s3 = aws_client("s3", region)
            try:
                location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
            except (ClientError, BotoCoreError) as error:
                raise guards.GuardRefused(f"bucket {bucket} is not readable: {error}") from None
            guards.check_bucket_region(bucket, location, region)
            try:
                rules = encryption_rules(s3, bucket)
            except (ClientError, BotoCoreError) as error:
                raise guards.GuardRefused(
                    f"GDPR: cannot check the default encryption of bucket {bucket} "
                    f"(s3:GetEncryptionConfiguration): {error}"
                ) from None
            algorithm = guards.check_default_encryption(bucket, rules)
            check_subnet(variable(VAR_SUBNET_ID), region)
        except (guards.GuardRefused, ValueError) as refusal:
            raise refuse(str(refusal)) from None
        prefix = guards.input_prefix(params["input_prefix"], upload_day)
        output = params["output_prefix"].lstrip("/")
        settings = {
            "bucket": bucket,
            "region": region,
            "dt": upload_day,
            "input_prefix": prefix,
            "input_uri": staging.s3_uri(bucket, prefix),
            "output_prefix": output,
            "output_uri": staging.s3_uri(bucket, output),
            "bucket_encryption": algorithm,
        }
        print(f"GDPR checks passed: {region}, bucket {bucket} ({algorithm}); input {settings['input_uri']}")
        return settings

    @task(multiple_outputs=True)
    def check_budget(settings: dict) -> dict:
        """Cost guard: worst case = instances x hourly price x (startup + expected run + idle timeout)."""
        params = get_current_context()["params"]
        s3 = aws_client("s3", settings["region"])
        objects, images = staging.count_images(s3, settings["bucket"], settings["input_prefix"])
        if not images:
            raise AirflowSkipException(
                f"no images under {settings['input_uri']} ({objects} objects): no cluster"
            )
        try:
            table = pricing.load_price_table(variable(VAR_PRICE_TABLE))
            estimate = guards.estimate_worst_case(
                table,
                instance_type=params["instance_type"],
                core_nodes=int(params["core_nodes"]),
                use_spot=bool(params["use_spot"]),
                images=images,
                idle_timeout_seconds=emr.IDLE_TIMEOUT_SECONDS,
                budget_eur=float(params["budget_eur"]),
            )
            print(f"{images} images ({objects} objects); {estimate.summary()}")
            guards.check_budget(estimate)
        except (guards.GuardRefused, pricing.PriceTableError) as refusal:
            raise refuse(str(refusal)) from None
        return {
            "images": images,
            "objects": objects,
            "estimate": estimate.as_dict(),
            "sensor_timeout_seconds": guards.sensor_timeout_seconds(images, estimate.executor_vcpus),
        }

    @task(multiple_outputs=True, retries=2, retry_delay=dt.timedelta(seconds=30))
    def stage_artifacts(settings: dict) -> dict:
        """Code, bootstrap and weights to S3 (once per content), then the cluster and step definitions."""
        context = get_current_context()
        params = context["params"]
        s3 = aws_client("s3", settings["region"])
        try:
            with tempfile.TemporaryDirectory(prefix="fruits-stage-") as scratch:
                staged = staging.stage_artifacts(
                    s3, settings["bucket"], params["weights"], int(params["input_size"]), Path(scratch)
                )
        except staging.StagingError as error:
            raise refuse(str(error)) from None
        print(
            f"artifacts {staged.artifacts_uri}: {len(staged.uploaded)} uploaded, {len(staged.skipped)} "
            f"already there; weights {staged.weights_uri}"
        )
        pipeline = PipelineParams(
            input_uri=settings["input_uri"],
            output_uri=settings["output_uri"],
            dt=settings["dt"],
            weights_uri=staged.weights_uri,
            k=int(params["k"]),
            input_size=int(params["input_size"]),
            refit=bool(params["refit"]),
            recompute=bool(params.get("recompute", False)),
        )
        overrides = emr.job_flow_overrides(
            bucket=settings["bucket"],
            upload_day=settings["dt"],
            instance_type=params["instance_type"],
            core_nodes=int(params["core_nodes"]),
            use_spot=bool(params["use_spot"]),
            bootstrap_script_uri=staged.bootstrap_script_uri,
            requirements_uri=staged.requirements_uri,
            configurations=emr.emr_configurations(staged.spark_env),
            tags=emr.cluster_tags(DAG_ID, context["run_id"], settings["dt"]),
            job_flow_role=variable(VAR_JOB_FLOW_ROLE) or emr.JOB_FLOW_ROLE,
            service_role=variable(VAR_SERVICE_ROLE) or emr.SERVICE_ROLE,
            subnet_id=variable(VAR_SUBNET_ID),
            security_configuration=variable(VAR_SECURITY_CONFIGURATION),
        )
        return {
            "artifacts_uri": staged.artifacts_uri,
            "weights_uri": staged.weights_uri,
            "job_flow_overrides": overrides,
            "steps": emr.emr_steps(pipeline, staged.artifacts_uri),
        }

    @task
    def report_cost(settings: dict, estimate: dict, cluster_id: str) -> dict:
        """Run summary: the cluster's hours (its timeline) priced like the estimate, and the outcome."""
        context = get_current_context()
        cluster = wait_for_termination(aws_client("emr", settings["region"]), cluster_id)
        timeline = cluster["Status"].get("Timeline", {})
        ended = timeline.get("EndDateTime") or dt.datetime.now(dt.UTC)
        hours, cost = guards.actual_cost_eur(estimate["hourly_eur"], timeline["CreationDateTime"], ended)
        failures = context["ti"].xcom_pull(task_ids=[f"watch_{name}" for name in STEP_NAMES], key="failure")
        failures = [f for f in (failures or []) if f]
        summary = {
            "dt": settings["dt"],
            "input": settings["input_uri"],
            "output": settings["output_uri"],
            "cluster_id": cluster_id,
            "cluster_state": cluster["Status"]["State"],
            "succeeded": not failures,
            "failure": failures[0] if failures else None,
            "cost": {
                "cluster_hours": hours,
                "normalized_instance_hours": cluster.get("NormalizedInstanceHours"),
                "estimated_cost_eur": cost,
                "hourly_eur": estimate["hourly_eur"],
                "estimated_worst_case_eur": estimate["worst_case_eur"],
                "budget_eur": estimate["budget_eur"],
                "prices_as_of": estimate["prices_as_of"],
            },
        }
        s3 = aws_client("s3", settings["region"])
        reports = f"{settings['output_prefix']}reports/dt={settings['dt']}/"
        try:
            if not failures:
                # the latest-run copy and the dated copy both get the cost
                for folder in (settings["output_prefix"], reports):
                    report = add_cost_to_report(s3, settings["bucket"], folder, summary["cost"])
                summary["counts"] = report.get("counts")
            s3.put_object(
                Bucket=settings["bucket"],
                Key=reports + "cost.json",
                Body=json.dumps(summary, indent=2, default=str).encode(),
                ServerSideEncryption=staging.SSE_ALGORITHM,
            )
        except (ClientError, ValueError) as error:
            print(f"report.json not read or cost.json not written under {reports}: {error}")
        outcome = "steps succeeded" if not failures else "FAILED: " + failures[0]["message"]
        print(
            f"run summary: {outcome}; cluster {cluster_id} {summary['cluster_state']} after {hours:.2f} h, "
            f"~{cost:.2f} EUR "
            f"(worst case estimate {estimate['worst_case_eur']:.2f}, budget {estimate['budget_eur']:g}), "
            f"NormalizedInstanceHours {cluster.get('NormalizedInstanceHours')}"
        )
        if summary["cluster_state"] in emr.ACTIVE_CLUSTER_STATES:
            state = summary["cluster_state"]
            raise refuse(
                f"cluster {cluster_id} is still {state} after terminate_cluster: terminate it "
                f"(aws emr terminate-clusters --cluster-ids {cluster_id}); auto-termination ends it after "
                f"{emr.IDLE_TIMEOUT_SECONDS} s idle"
            )
        return summary

    settings = check_gdpr()
    plan = check_budget(settings)
    staged = stage_artifacts(settings)

    region = "{{ params.region }}"
    create_cluster = emr.FruitsCreateJobFlowOperator(
        task_id="create_cluster",
        job_flow_overrides=staged["job_flow_overrides"],
        emr_conn_id=None,
        aws_conn_id=AWS_CONN_ID,
        region_name=region,
        wait_for_completion=False,
        terminate_job_flow_on_failure=True,
        deferrable=DEFERRABLE,
        retries=2,
        retry_delay=dt.timedelta(seconds=30),
    )
    add_steps = EmrAddStepsOperator(
        task_id="add_steps",
        job_flow_id=create_cluster.output,
        steps=staged["steps"],
        aws_conn_id=AWS_CONN_ID,
        region_name=region,
        wait_for_completion=False,
        deferrable=False,  # adding is instant; the watch_<step> sensors wait, one step each
    )
    watchers = [
        emr.FruitsStepSensor(
            task_id=f"watch_{name}",
            job_flow_id=create_cluster.output,
            step_ids=add_steps.output,
            step_name=name,
            timeout_seconds=plan["sensor_timeout_seconds"],
            poke_interval=POKE_SECONDS,
            mode="poke" if DEFERRABLE else "reschedule",
            deferrable=DEFERRABLE,
            aws_conn_id=AWS_CONN_ID,
            region_name=region,
        )
        for name in STEP_NAMES
    ]
    terminate_cluster = EmrTerminateJobFlowOperator(
        task_id="terminate_cluster",
        job_flow_id=create_cluster.output,
        aws_conn_id=AWS_CONN_ID,
        region_name=region,
        deferrable=DEFERRABLE,
        retries=3,
        retry_delay=dt.timedelta(seconds=30),
    )
    summary = report_cost(settings, plan["estimate"], create_cluster.output)

    chain(
        settings,
        plan,
        staged,
        create_cluster,
        add_steps,
        *watchers,
        # teardowns: run once the work is done, failed or marked failed, whenever the cluster was created.
        # The run's state follows watch_pca and report_cost (which fails if the cluster is left running);
        # on_failure_fail_dagrun on terminate_cluster would make it the only leaf, hiding step failures.
        terminate_cluster.as_teardown(setups=create_cluster),
        summary.as_teardown(setups=create_cluster, on_failure_fail_dagrun=True),
    )
