"""The run's EMR cluster as data: the job flow definition (instances, volumes, bootstrap, configurations,
tags) and the EMR steps. Pure: no AWS call, no Airflow import; ``aws.operators`` submits it.

The steps are not defined here: they are ``pipeline.plan`` turned into ``command-runner.jar``
``spark-submit`` calls by ``pipeline.spark_submit_args``, exactly what ``fruits run-local`` submits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fruits_platform.aws import bootstrap, pricing
from fruits_platform.aws.gdpr import EMR_MANAGED_TAG
from fruits_platform.aws.sizing import ExecutorSizing, size_executors
from fruits_platform.pipeline import PipelineParams, plan, spark_submit_args

if TYPE_CHECKING:
    from fruits_platform.aws.settings import RunSettings
    from fruits_platform.aws.staging import StagedArtifacts

AWS_CONN_ID = "aws_default"
# Spark 3.5.x like the pinned pyspark, on Amazon Linux 2023; bump it here only, after a run on the new release
RELEASE_LABEL = "emr-7.10.0"
# Auto-termination after this long without a running step: the safety net if Airflow never runs the
# teardown (worker lost, scheduler down). Steps are added right after creation, so the cluster is never
# idle before or between steps; 15 min leaves room to re-add a step by hand while debugging.
IDLE_TIMEOUT_SECONDS = 900
# Root volume of every node: the bootstrap's venv (~1.8 GB) and pip's temporary files come on top of the
# AMI; EMR's default (15 GiB) leaves too little. Counted in the cost bound with the data volume.
ROOT_VOLUME_GIB = 30
# One gp3 data volume per node (HDFS, YARN local dirs: shuffle and spills) instead of EMR's per-type default,
# so that the cost bound knows the size
DATA_VOLUME_GIB = 64
EBS_GIB_PER_INSTANCE = ROOT_VOLUME_GIB + DATA_VOLUME_GIB
# `timeout` (coreutils on every EMR node) wraps each step's spark-submit: the step's limit is enforced on the
# cluster even when Airflow is gone; --kill-after ends a spark-submit that ignores SIGTERM
STEP_TIMEOUT_KILL_AFTER_SECONDS = 60
CLUSTER_NAME_PREFIX = "fruits-features"
LOG_PREFIX = "emr-logs/"
# states in which a cluster still costs money and can still run this run's steps
ACTIVE_CLUSTER_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
# what a cluster is once terminate_cluster has done its job: TERMINATED_WITH_ERRORS is how a cluster ends
# after a failed step's ActionOnFailure TERMINATE_CLUSTER (or a bootstrap failure), before the teardown ran
ENDED_CLUSTER_STATES = ("TERMINATED", "TERMINATED_WITH_ERRORS")
# spark-submit --conf of every EMR step (the cluster's spark-defaults provide the rest)
EMR_SPARK_CONF: dict[str, str] = {"spark.python.worker.reuse": "true"}
# EMRFS writes every object (the Spark outputs) with SSE-S3, whatever the bucket's default
EMRFS_SSE: dict[str, Any] = {
    "Classification": "emrfs-site",
    "Properties": {"fs.s3.enableServerSideEncryption": "true"},
}
# The Glue Data Catalog as Spark's metastore: spark.table("fruits.features") in a step or a notebook reads
# the tables infra/fruits-infra.yaml creates (the node role may read that database and its tables only)
GLUE_METASTORE: dict[str, Any] = {
    "Classification": "spark-hive-site",
    "Properties": {
        "hive.metastore.client.factory.class": (
            "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
        )
    },
}


def emr_steps(
    params: PipelineParams | Mapping[str, Any],
    artifacts_uri: str,
    step_limits: Mapping[str, int],
    *,
    action_on_failure: str = "TERMINATE_CLUSTER",
    name_suffix: str = "",
) -> list[dict[str, Any]]:
    """The pipeline's steps as EMR steps: ``timeout <limit> spark-submit --deploy-mode client`` through
    command-runner; a step past its limit exits 124, EMR marks it FAILED and ``action_on_failure`` follows:
    a failed step ends the cluster at once, or (CONTINUE, a range of days) the next step runs."""
    steps = []
    for step in plan(params):
        limit = [
            "timeout",
            f"--kill-after={STEP_TIMEOUT_KILL_AFTER_SECONDS}",
            f"{int(step_limits[step.name])}s",
        ]
        # client mode: the driver runs on the primary node, where the step's stdout/stderr are collected
        submit = spark_submit_args(step, artifacts_uri, EMR_SPARK_CONF, deploy_mode="client")
        steps.append(
            {
                "Name": step.name + name_suffix,
                # the DAG's teardown terminates the cluster in every other case
                "ActionOnFailure": action_on_failure,
                "HadoopJarStep": {
                    "Jar": "command-runner.jar",
                    "Args": [*limit, *submit],
                },
            }
        )
    return steps


def _merge_classification(
    configurations: list[dict[str, Any]], classification: str, properties: Mapping
) -> None:
    for configuration in configurations:
        if configuration.get("Classification") == classification:
            configuration.setdefault("Properties", {}).update(properties)
            return
    configurations.append({"Classification": classification, "Properties": dict(properties)})


def emr_configurations(
    spark_env: Sequence[Mapping[str, Any]], sizing: ExecutorSizing | None = None
) -> list[dict[str, Any]]:
    """bootstrap/spark-env.json's Configurations, EMRFS server-side encryption, the Glue Data Catalog as
    metastore, and the executor sizing (``sizing.ExecutorSizing.spark_defaults``) merged into
    spark-defaults."""
    configurations = copy.deepcopy(list(spark_env))
    _merge_classification(configurations, EMRFS_SSE["Classification"], EMRFS_SSE["Properties"])
    _merge_classification(configurations, GLUE_METASTORE["Classification"], GLUE_METASTORE["Properties"])
    if sizing is not None:
        _merge_classification(configurations, "spark-defaults", sizing.spark_defaults())
    return configurations


# Spot core fleet: max price = each type's On-Demand price (the cost bound's cap); after this long without
# Spot capacity EMR launches the core nodes On-Demand rather than leave the run waiting
SPOT_MAX_PRICE_PERCENT_OF_ON_DEMAND = 100.0
SPOT_TIMEOUT_MINUTES = 20
SPOT_ALLOCATION_STRATEGY = "price-capacity-optimized"


def on_demand_instance_groups(instance_type: str, core_nodes: int) -> list[dict[str, Any]]:
    groups = [
        {
            "Name": "primary",
            "Market": "ON_DEMAND",  # losing the primary node loses the cluster: never Spot
            "InstanceRole": "MASTER",
            "InstanceType": instance_type,
            "InstanceCount": 1,
            "EbsConfiguration": ebs_configuration(),
        }
    ]
    if core_nodes:
        groups.append(
            {
                "Name": "core",
                "Market": "ON_DEMAND",
                "InstanceRole": "CORE",
                "InstanceType": instance_type,
                "InstanceCount": core_nodes,
                "EbsConfiguration": ebs_configuration(),
            }
        )
    return groups


def spot_instance_fleets(
    instance_type: str, core_nodes: int, spot_types: Sequence[str]
) -> list[dict[str, Any]]:
    return [
        {
            "Name": "primary",
            "InstanceFleetType": "MASTER",
            "TargetOnDemandCapacity": 1,  # losing the primary node loses the cluster: never Spot
            "InstanceTypeConfigs": [{"InstanceType": instance_type, "EbsConfiguration": ebs_configuration()}],
        },
        {
            "Name": "core",
            "InstanceFleetType": "CORE",
            "TargetSpotCapacity": core_nodes,
            "InstanceTypeConfigs": [
                {
                    "InstanceType": name,
                    "WeightedCapacity": 1,
                    "BidPriceAsPercentageOfOnDemandPrice": SPOT_MAX_PRICE_PERCENT_OF_ON_DEMAND,
                    "EbsConfiguration": ebs_configuration(),
                }
                for name in spot_types
            ],
            "LaunchSpecifications": {
                "SpotSpecification": {
                    "AllocationStrategy": SPOT_ALLOCATION_STRATEGY,
                    "TimeoutDurationMinutes": SPOT_TIMEOUT_MINUTES,
                    "TimeoutAction": "SWITCH_TO_ON_DEMAND",
                }
            },
        },
    ]


def ebs_configuration() -> dict[str, Any]:
    return {
        "EbsBlockDeviceConfigs": [
            {
                "VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": DATA_VOLUME_GIB},
                "VolumesPerInstance": 1,
            }
        ],
        "EbsOptimized": True,
    }


def cluster_tags(dag_id: str, run_id: str, upload_day: str) -> dict[str, str]:
    """Tags of the run's cluster: cost allocation, and how a retried create task finds it (run_id)."""
    return {
        "project": "fruits",
        "dag_id": dag_id,
        "run_id": run_id,
        "dt": upload_day,
        # AmazonEMRServicePolicy_v2 only manages EC2 resources carrying this tag; infra/'s Airflow policy
        # refuses a RunJobFlow without it (see infra/README.md)
        EMR_MANAGED_TAG[0]: EMR_MANAGED_TAG[1],
    }


def cluster_instances(
    instance_type: str, core_nodes: int, use_spot: bool, spot_instance_types: Sequence[str], subnet_id: str
) -> dict[str, Any]:
    """``Instances`` of the job flow: Spot fleets or On-Demand groups, kept alive for the steps."""
    if use_spot and core_nodes:
        instances: dict[str, Any] = {
            "InstanceFleets": spot_instance_fleets(
                instance_type, core_nodes, spot_instance_types or [instance_type]
            )
        }
    else:
        instances = {"InstanceGroups": on_demand_instance_groups(instance_type, core_nodes)}
    instances.update(
        {
            # steps are added after creation: the cluster must wait for them (auto-termination ends it)
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
        }
    )
    # required: EMR's v2 service policy launches only in a tagged subnet (gdpr.check_subnet); fleets
    # take a list (EMR picks among them), groups a single subnet
    instances["Ec2SubnetIds" if "InstanceFleets" in instances else "Ec2SubnetId"] = (
        [subnet_id] if "InstanceFleets" in instances else subnet_id
    )
    return instances


def job_flow_overrides(
    *,
    bucket: str,
    upload_day: str,
    instance_type: str,
    core_nodes: int,
    use_spot: bool,
    bootstrap_script_uri: str,
    requirements_uri: str,
    wheelhouse_uri: str,
    configurations: list[dict[str, Any]],
    tags: Mapping[str, str],
    job_flow_role: str,
    service_role: str,
    subnet_id: str,
    spot_instance_types: Sequence[str] = (),
    security_configuration: str | None = None,
    release_label: str = RELEASE_LABEL,
    idle_timeout_seconds: int = IDLE_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """``run_job_flow`` arguments of the run's transient cluster.

    On-Demand: two instance groups. ``use_spot``: instance fleets (EMR cannot mix the two), the core fleet
    on Spot over ``spot_instance_types`` (``pricing.spot_alternatives``; default: ``instance_type`` only)
    with price-capacity-optimized allocation, each type capped at its On-Demand price (the cost guard's
    bound assumes that cap). The roles and the subnet have no default: see ``settings.require_variables``."""
    instances = cluster_instances(instance_type, core_nodes, use_spot, spot_instance_types, subnet_id)
    overrides: dict[str, Any] = {
        "Name": f"{CLUSTER_NAME_PREFIX} dt={upload_day}",
        "ReleaseLabel": release_label,
        "Applications": [{"Name": "Spark"}],
        "LogUri": f"s3://{bucket}/{LOG_PREFIX}",
        "Instances": instances,
        "AutoTerminationPolicy": {"IdleTimeout": idle_timeout_seconds},
        "BootstrapActions": [
            bootstrap.bootstrap_action(bootstrap_script_uri, requirements_uri, wheelhouse_uri)
        ],
        "Configurations": configurations,
        "EbsRootVolumeSize": ROOT_VOLUME_GIB,
        "JobFlowRole": job_flow_role,
        "ServiceRole": service_role,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": key, "Value": value} for key, value in tags.items()],
    }
    if security_configuration:
        overrides["SecurityConfiguration"] = security_configuration
    return overrides


def s3_scheme(uri: str) -> str:
    """EMR reports its LogUri (and a step's LogFile) as ``s3n://...``: the same objects as ``s3://...``."""
    return "s3://" + uri.removeprefix("s3n://") if uri.startswith("s3n://") else uri


def normalise_log_uri(log_uri: str | None) -> str | None:
    if not log_uri:
        return None
    uri = s3_scheme(log_uri)
    return uri if uri.endswith("/") else uri + "/"


def step_log_uri(log_uri: str | None, cluster_id: str, step_id: str) -> str:
    base = normalise_log_uri(log_uri) or "(no LogUri) "
    return f"{base}{cluster_id}/steps/{step_id}/stderr.gz"


def executor_sizing(
    table: Mapping[str, Any], instance_type: str, core_nodes: int, engine: str
) -> ExecutorSizing:
    """The executors' shape on this instance type for the engine the bootstrap installs."""
    vcpus = int(table["instances"][instance_type]["vcpus"])
    return size_executors(instance_type, vcpus, core_nodes, engine)


def cluster_definition(
    run: RunSettings, staged: StagedArtifacts, table: Mapping[str, Any], dag_id: str, run_id: str
) -> dict[str, Any]:
    """The run's cluster, from its settings, what staging put in S3 and the price table (Spot fleet).
    ``run`` carries the shape check_budget chose (``shapes.resolved``): a param still at auto is a bug."""
    shape = ("instance_type", "core_nodes", "use_spot")
    unresolved = [name for name in shape if getattr(run, name) == "auto"]
    if unresolved:
        raise ValueError(f"{', '.join(unresolved)} still auto: the cluster's shape was not chosen")
    return job_flow_overrides(
        bucket=run.bucket,
        upload_day=run.dt,
        instance_type=run.instance_type,
        core_nodes=run.core_nodes,
        use_spot=run.use_spot,
        bootstrap_script_uri=staged.bootstrap_script_uri,
        requirements_uri=staged.requirements_uri(run.pipeline["engine"]),
        wheelhouse_uri=staged.wheelhouse_uri,
        configurations=emr_configurations(
            staged.spark_env,
            executor_sizing(table, run.instance_type, run.core_nodes, run.pipeline["engine"]),
        ),
        tags=cluster_tags(dag_id, run_id, run.dt),
        job_flow_role=run.job_flow_role,
        service_role=run.service_role,
        subnet_id=run.subnet_id,
        spot_instance_types=pricing.spot_alternatives(table, run.instance_type),
        security_configuration=run.security_configuration,
    )
