"""GDPR and cost guards of the EMR run, and the run date -> uploads prefix mapping.

Nothing here imports Airflow: the DAG's guard tasks pass boto3 clients or the facts they fetched (image
count, price table) and these functions decide, each refusal being a one-line ``GuardRefused``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import asdict, dataclass

from botocore.exceptions import BotoCoreError, ClientError

from fruits_platform.aws.pricing import instance_prices
from fruits_spark.contract import STEP_NAMES

# Regions in EU member states (GDPR): the bucket, the cluster and the outputs must all be in one.
# London (eu-west-2) and Zurich (eu-central-2) are outside the EU: refused, as infra/ refuses them.
EU_REGIONS: frozenset[str] = frozenset(
    {"eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2"}
)
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Throughput of the whole pipeline (ingest + features + pca) in images per second per executor vCPU.
# Measured (docs/BENCHMARKS.md): `fruits run-local` on 2,000 images, 2 cores, 15.5 img/s end to end,
# fixed costs included = 7.7 img/s per core. An m5 vCPU is half a physical core (hyperthread): 5 per vCPU
# keeps the worst case on the safe side.
IMAGES_PER_SECOND_PER_VCPU = 5.0
THROUGHPUT_SOURCE = "measured 2026-11-23: 7.7 img/s per core end to end (2,000 images), 5 per EMR vCPU"
# EMR provisioning + bootstrap (pip install of TensorFlow into /opt/fruits-venv) before the first step runs
CLUSTER_STARTUP_SECONDS = 900
# spark-submit, YARN application start and weights broadcast, per step
STEP_OVERHEAD_SECONDS = 120
# a sensor waits startup + overheads + SENSOR_SAFETY_FACTOR x the expected compute, at least the floor
SENSOR_SAFETY_FACTOR = 3.0
SENSOR_TIMEOUT_FLOOR_SECONDS = 1800


class GuardRefused(Exception):
    """A guard refused the run; ``str()`` is the one-line reason shown in the task log."""


def require_bucket(bucket: str | None) -> str:
    bucket = (bucket or "").strip()
    if not bucket:
        raise GuardRefused("param bucket is required (or set the Airflow Variable fruits_bucket)")
    if not BUCKET_NAME.match(bucket):
        raise GuardRefused(f"param bucket {bucket!r} is not a valid S3 bucket name")
    return bucket


def check_region(region: str) -> str:
    if region not in EU_REGIONS:
        raise GuardRefused(
            f"GDPR: region {region} is not in the EU allow-list ({', '.join(sorted(EU_REGIONS))})"
        )
    return region


def bucket_region(location_constraint: str | None) -> str:
    """The region of a bucket from ``get_bucket_location``'s LocationConstraint (legacy values included)."""
    if not location_constraint:
        return "us-east-1"
    return {"EU": "eu-west-1"}.get(location_constraint, location_constraint)


def check_bucket_region(bucket: str, location_constraint: str | None, region: str) -> None:
    actual = bucket_region(location_constraint)
    if actual != region:
        raise GuardRefused(f"GDPR: bucket {bucket} is in {actual}, not in the run's region {region}")


def check_default_encryption(bucket: str, rules: list[dict]) -> str:
    """The bucket's default encryption algorithm: it is what encrypts the Spark outputs at rest."""
    for rule in rules:
        algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
        if algorithm in ("AES256", "aws:kms", "aws:kms:dsse"):
            return algorithm
    raise GuardRefused(f"GDPR: bucket {bucket} has no default server-side encryption")


def encryption_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ServerSideEncryptionConfigurationNotFoundError":
            return []
        raise


def check_subnet(ec2, subnet_id: str | None, region: str) -> None:
    """The subnet the cluster will use (Variable fruits_emr_subnet_id), if any, exists in ``region``."""
    if not subnet_id:
        return
    try:
        ec2.describe_subnets(SubnetIds=[subnet_id])
    except (ClientError, BotoCoreError) as error:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable fruits_emr_subnet_id) not usable in {region}: {error}"
        ) from None


def check_gdpr(s3, ec2, bucket: str, region: str, subnet_id: str | None) -> str:
    """Every GDPR check of a run, before anything is created; returns the bucket's encryption algorithm."""
    check_region(region)
    try:
        location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except (ClientError, BotoCoreError) as error:
        raise GuardRefused(f"bucket {bucket} is not readable: {error}") from None
    check_bucket_region(bucket, location, region)
    try:
        rules = encryption_rules(s3, bucket)
    except (ClientError, BotoCoreError) as error:
        raise GuardRefused(
            f"GDPR: cannot check the default encryption of bucket {bucket} "
            f"(s3:GetEncryptionConfiguration): {error}"
        ) from None
    algorithm = check_default_encryption(bucket, rules)
    check_subnet(ec2, subnet_id, region)
    return algorithm


@dataclass(frozen=True)
class CostEstimate:
    instance_type: str
    instances: int
    use_spot: bool
    images: int
    executor_vcpus: int
    images_per_second: float
    startup_hours: float
    run_hours: float
    idle_hours: float
    hours: float
    hourly_eur: float
    worst_case_eur: float
    budget_eur: float
    prices_as_of: str
    throughput_source: str

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        market = "core on Spot" if self.use_spot else "On-Demand"
        return (
            f"{self.instances} x {self.instance_type} ({market}) at {self.hourly_eur:.3f} EUR/h x "
            f"{self.hours:.2f} h (startup {self.startup_hours:.2f} + run {self.run_hours:.2f} for "
            f"{self.images} images at {self.images_per_second:.0f} img/s + idle timeout "
            f"{self.idle_hours:.2f}) = {self.worst_case_eur:.2f} EUR worst case"
        )


def cluster_hourly_eur(table: dict, instance_type: str, core_nodes: int, use_spot: bool) -> float:
    """EC2 + EMR fee per hour of the whole cluster: the primary node always On-Demand."""
    prices = instance_prices(table, instance_type)
    on_demand = prices["ec2_on_demand_usd"] + prices["emr_usd"]
    core = (prices["ec2_spot_usd"] if use_spot else prices["ec2_on_demand_usd"]) + prices["emr_usd"]
    return (on_demand + core_nodes * core) * float(table["usd_to_eur"])


def executor_vcpus(table: dict, instance_type: str, core_nodes: int) -> int:
    """vCPUs running Spark executors: the core nodes', or the primary's on a single-node cluster."""
    return int(instance_prices(table, instance_type)["vcpus"]) * max(core_nodes, 1)


def expected_run_seconds(images: int, vcpus: int) -> float:
    return len(STEP_NAMES) * STEP_OVERHEAD_SECONDS + images / (IMAGES_PER_SECOND_PER_VCPU * vcpus)


def estimate_worst_case(
    table: dict,
    *,
    instance_type: str,
    core_nodes: int,
    use_spot: bool,
    images: int,
    idle_timeout_seconds: int,
    budget_eur: float,
) -> CostEstimate:
    """Every instance billed for startup + expected run + the idle timeout before auto-termination."""
    vcpus = executor_vcpus(table, instance_type, core_nodes)
    startup, run, idle = (
        CLUSTER_STARTUP_SECONDS / 3600,
        expected_run_seconds(images, vcpus) / 3600,
        (idle_timeout_seconds / 3600),
    )
    hourly = cluster_hourly_eur(table, instance_type, core_nodes, use_spot)
    hours = startup + run + idle
    return CostEstimate(
        instance_type=instance_type,
        instances=1 + core_nodes,
        use_spot=use_spot,
        images=images,
        executor_vcpus=vcpus,
        images_per_second=IMAGES_PER_SECOND_PER_VCPU * vcpus,
        startup_hours=round(startup, 4),
        run_hours=round(run, 4),
        idle_hours=round(idle, 4),
        hours=round(hours, 4),
        hourly_eur=round(hourly, 4),
        worst_case_eur=round(hourly * hours, 2),
        budget_eur=float(budget_eur),
        prices_as_of=str(table.get("as_of")),
        throughput_source=THROUGHPUT_SOURCE,
    )


def check_budget(estimate: CostEstimate) -> None:
    if estimate.worst_case_eur > estimate.budget_eur:
        raise GuardRefused(
            f"cost: estimated {estimate.worst_case_eur:.2f} EUR exceeds budget_eur {estimate.budget_eur:g}: "
            f"{estimate.summary()}"
        )


def sensor_timeout_seconds(images: int, vcpus: int) -> int:
    """How long one step sensor waits before giving up: sized from the batch, not Airflow's 7-day default."""
    compute = images / (IMAGES_PER_SECOND_PER_VCPU * vcpus)
    seconds = (
        CLUSTER_STARTUP_SECONDS + len(STEP_NAMES) * STEP_OVERHEAD_SECONDS + SENSOR_SAFETY_FACTOR * compute
    )
    return max(SENSOR_TIMEOUT_FLOOR_SECONDS, math.ceil(seconds))


def actual_cost_eur(hourly_eur: float, created: dt.datetime, ended: dt.datetime) -> tuple[float, float]:
    """(hours, euros) of a cluster that ran from ``created`` to ``ended`` (EMR bills per second)."""
    hours = max((ended - created).total_seconds(), 0.0) / 3600
    return round(hours, 4), round(hours * hourly_eur, 2)


def upload_date(
    data_interval_start: dt.datetime | None, logical_date: dt.datetime | None, run_after: dt.datetime
) -> str:
    """The upload date (UTC, YYYY-MM-DD) a run processes.

    Scheduled and backfill runs process their data interval's first day: the 02:00 UTC run of day D covers
    [D-1 02:00, D 02:00) and reads ``uploads/dt=D-1/``. A manual run without a logical date (possible in
    Airflow 3) has no data interval: it processes the date it was triggered for (``run_after``).
    """
    moment = data_interval_start or logical_date or run_after
    return moment.astimezone(dt.UTC).date().isoformat()


def uploads_prefix(upload_day: str) -> str:
    """Where ``fruits upload`` puts (and the DAG reads) the images of one upload date."""
    return f"uploads/dt={upload_day}/"


def input_prefix(param: str | None, upload_day: str) -> str:
    """The ``input`` param (a bucket prefix) if given, e.g. the initial dataset, else the day's uploads."""
    prefix = (param or "").strip().lstrip("/")
    if not prefix:
        return uploads_prefix(upload_day)
    return prefix if prefix.endswith("/") else prefix + "/"
