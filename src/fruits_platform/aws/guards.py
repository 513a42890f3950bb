"""GDPR and cost guards of the EMR run, and the run date -> uploads prefix mapping.

Nothing here imports Airflow: the DAG's guard tasks pass boto3 clients or the facts they fetched (image
count, price table) and these functions decide, each refusal being a one-line ``GuardRefused``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from botocore.exceptions import BotoCoreError, ClientError

from fruits_platform.aws.pricing import HOURS_PER_MONTH, instance_prices, spot_alternatives
from fruits_spark.contract import STEP_NAMES, STEPS

# Regions in EU member states (GDPR): the bucket, the cluster and the outputs must all be in one.
# London (eu-west-2) and Zurich (eu-central-2) are outside the EU: refused, as infra/ refuses them.
EU_REGIONS: frozenset[str] = frozenset(
    {"eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2"}
)
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Throughput of the whole pipeline (ingest + features + pca) in images per second per executor vCPU.
# Measured (docs/BENCHMARKS.md, round 2, ONNX Runtime engine): `fruits run-local` on 2,000 images, 2 cores,
# 39.8 img/s end to end, fixed costs included = 19.9 img/s per core (44.6 at 20,000). An m5 vCPU is half a
# physical core (hyperthread): 10 per vCPU keeps the expectation on the safe side (the cost bound comes
# from the enforced limits, not from this).
IMAGES_PER_SECOND_PER_VCPU = 10.0
THROUGHPUT_SOURCE = (
    "measured 2026-11-23 (onnx): 19.9 img/s per core end to end (2,000 images), 10 per EMR vCPU"
)
# EMR provisioning + bootstrap (pip install into /opt/fruits-venv) before the first step runs: expected
CLUSTER_STARTUP_SECONDS = 900
# ... and enforced: watch_ingest's timeout is this plus the ingest step's bound, after which the teardown
# terminates the cluster. Twice the expected start-up: a slow Spot fulfilment or PyPI is not a failure.
STARTUP_LIMIT_SECONDS = 1800
# spark-submit, YARN application start and weights broadcast, per step
STEP_OVERHEAD_SECONDS = 120
# Each step is bounded twice by the same figure: on the cluster (`timeout` wraps its spark-submit, EMR marks
# it FAILED and TERMINATE_CLUSTER ends the cluster) and by its sensor. A step's limit is its share of the
# pipeline's expected compute x this factor, plus its overhead, at least the floor.
STEP_LIMIT_FACTOR = 3.0
STEP_LIMIT_FLOOR_SECONDS = 900
# each step's share of the pipeline's compute: its record's (contract.STEPS, measured), in pipeline order
STEP_COMPUTE_SHARE: dict[str, float] = {step.name: step.compute_share for step in STEPS}
# a sensor notices the end of its step within one poke: slack over the step's bound so that the cluster
# side (which says why: exit 124 in the step's log) fires first
SENSOR_SLACK_SECONDS = 120
# terminate_cluster to instances gone (EMR bills until then): covered by the idle timeout term of the bound
TERMINATION_SECONDS = 600


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


@dataclass(frozen=True)
class CostEstimate:
    """The run's cost bound (what the budget is checked against) and its expectation.

    bound = every instance at its price cap (On-Demand, or the Spot max price the request sets, which is
    the On-Demand price) + EMR fee + its EBS volumes + its public IPv4, for start-up limit + the steps'
    limits + the idle timeout. Each of those durations is enforced by the run itself (sensor timeouts,
    `timeout` on the cluster, auto-termination), so the cluster cannot be billed longer: a real upper bound.
    The expectation uses the measured throughput and the typical Spot price instead.
    """

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
    step_limits: dict[str, int]
    startup_limit_seconds: int
    instance_hourly_eur: float
    ebs_hourly_eur: float
    ipv4_hourly_eur: float
    ebs_gib_per_instance: int
    hourly_eur: float
    worst_case_eur: float
    expected_hours: float
    expected_hourly_eur: float
    expected_eur: float
    budget_eur: float
    prices_as_of: str
    throughput_source: str

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        market = "core on Spot capped at On-Demand" if self.use_spot else "On-Demand"
        return (
            f"{self.instances} x {self.instance_type} ({market}) at {self.hourly_eur:.3f} EUR/h "
            f"(instances {self.instance_hourly_eur:.3f} + EBS {self.ebs_gib_per_instance} GiB each "
            f"{self.ebs_hourly_eur:.3f} + public IPv4 {self.ipv4_hourly_eur:.3f}) x {self.hours:.2f} h "
            f"(startup limit {self.startup_hours:.2f} + step limits "
            f"{' + '.join(f'{name} {seconds / 3600:.2f}' for name, seconds in self.step_limits.items())} "
            f"+ slack = {self.run_hours:.2f} + idle timeout "
            f"{self.idle_hours:.2f}) = {self.worst_case_eur:.2f} EUR bound; expected "
            f"{self.expected_eur:.2f} EUR (for {self.images} images at "
            f"{self.images_per_second:.0f} img/s, {self.expected_hours:.2f} h)"
        )


def cluster_hourly_eur(table: dict, instance_type: str, core_nodes: int, use_spot: bool) -> float:
    """EC2 + EMR fee per hour of the whole cluster at typical prices: the primary node always On-Demand."""
    prices = instance_prices(table, instance_type)
    on_demand = prices["ec2_on_demand_usd"] + prices["emr_usd"]
    core = (prices["ec2_spot_usd"] if use_spot else prices["ec2_on_demand_usd"]) + prices["emr_usd"]
    return (on_demand + core_nodes * core) * float(table["usd_to_eur"])


def cluster_hourly_cap_eur(table: dict, instance_type: str, core_nodes: int, use_spot: bool = False) -> float:
    """EC2 + EMR fee per hour at the price caps. A Spot core fleet may run any of its instance types
    (``pricing.spot_alternatives``), each capped at its On-Demand price (the request's
    BidPriceAsPercentageOfOnDemandPrice = 100, and SWITCH_TO_ON_DEMAND falls back to On-Demand): the
    dearest of them bounds a core node."""

    def capped(name: str) -> float:
        prices = instance_prices(table, name)
        return prices["ec2_on_demand_usd"] + prices["emr_usd"]

    core_types = spot_alternatives(table, instance_type) if use_spot else (instance_type,)
    core = max(capped(name) for name in core_types)
    return (capped(instance_type) + core_nodes * core) * float(table["usd_to_eur"])


def ebs_hourly_eur(table: dict, gib_per_instance: int, instances: int) -> float:
    per_gib_hour = float(table["ebs_gp3_usd_per_gb_month"]) / HOURS_PER_MONTH
    return gib_per_instance * instances * per_gib_hour * float(table["usd_to_eur"])


def executor_vcpus(table: dict, instance_type: str, core_nodes: int) -> int:
    """vCPUs running Spark executors: the core nodes', or the primary's on a single-node cluster."""
    return int(instance_prices(table, instance_type)["vcpus"]) * max(core_nodes, 1)


def expected_compute_seconds(images: int, vcpus: int) -> float:
    return images / (IMAGES_PER_SECOND_PER_VCPU * vcpus)


def expected_run_seconds(images: int, vcpus: int) -> float:
    return len(STEP_NAMES) * STEP_OVERHEAD_SECONDS + expected_compute_seconds(images, vcpus)


def step_limits(images: int, vcpus: int) -> dict[str, int]:
    """What each step may take (seconds, in pipeline order), enforced on the cluster (`timeout`) and by
    its sensor."""
    compute = expected_compute_seconds(images, vcpus)
    return {
        name: max(
            STEP_LIMIT_FLOOR_SECONDS, math.ceil(STEP_OVERHEAD_SECONDS + STEP_LIMIT_FACTOR * share * compute)
        )
        for name, share in STEP_COMPUTE_SHARE.items()
    }


def sensor_timeouts(limits: Mapping[str, int]) -> dict[str, int]:
    """Each watch_<step> sensor's timeout: its step's limit (+ poke slack); the first one also waits for
    the cluster's start-up, which nothing else bounds while Airflow is up."""
    return {
        name: limit + SENSOR_SLACK_SECONDS + (STARTUP_LIMIT_SECONDS if i == 0 else 0)
        for i, (name, limit) in enumerate(limits.items())
    }


def estimate_worst_case(
    table: dict,
    *,
    instance_type: str,
    core_nodes: int,
    use_spot: bool,
    images: int,
    idle_timeout_seconds: int,
    budget_eur: float,
    ebs_gib_per_instance: int,
    executor_cores: int | None = None,
    public_ipv4: bool = True,
) -> CostEstimate:
    """The cost bound from the limits the run enforces, and the expected cost (see ``CostEstimate``).

    ``executor_cores``: the cores the executors really get (``sizing.size_executors`` may leave some vCPUs
    without a Python worker when memory is short); default: every vCPU of the executor nodes."""
    vcpus = executor_cores or executor_vcpus(table, instance_type, core_nodes)
    instances = 1 + core_nodes
    limits = step_limits(images, vcpus)
    startup, run, idle = (
        STARTUP_LIMIT_SECONDS / 3600,
        # each step within its limit, seen by its sensor within the slack; the sensors' timeouts sum to this
        sum(limit + SENSOR_SLACK_SECONDS for limit in limits.values()) / 3600,
        max(idle_timeout_seconds, TERMINATION_SECONDS) / 3600,
    )
    hours = startup + run + idle
    instance_rate = cluster_hourly_cap_eur(table, instance_type, core_nodes, use_spot)
    ebs_rate = ebs_hourly_eur(table, ebs_gib_per_instance, instances)
    ipv4_rate = (
        instances * float(table.get("public_ipv4_usd_per_hour", 0.0)) * float(table["usd_to_eur"])
        if public_ipv4
        else 0.0
    )
    hourly = instance_rate + ebs_rate + ipv4_rate
    expected_hours = (
        CLUSTER_STARTUP_SECONDS + expected_run_seconds(images, vcpus) + TERMINATION_SECONDS
    ) / 3600
    expected_hourly = cluster_hourly_eur(table, instance_type, core_nodes, use_spot) + ebs_rate + ipv4_rate
    return CostEstimate(
        instance_type=instance_type,
        instances=instances,
        use_spot=use_spot,
        images=images,
        executor_vcpus=vcpus,
        images_per_second=IMAGES_PER_SECOND_PER_VCPU * vcpus,
        startup_hours=round(startup, 4),
        run_hours=round(run, 4),
        idle_hours=round(idle, 4),
        hours=round(hours, 4),
        step_limits=limits,
        startup_limit_seconds=STARTUP_LIMIT_SECONDS,
        instance_hourly_eur=round(instance_rate, 4),
        ebs_hourly_eur=round(ebs_rate, 4),
        ipv4_hourly_eur=round(ipv4_rate, 4),
        ebs_gib_per_instance=ebs_gib_per_instance,
        hourly_eur=round(hourly, 4),
        worst_case_eur=round(hourly * hours, 2),
        expected_hours=round(expected_hours, 4),
        expected_hourly_eur=round(expected_hourly, 4),
        expected_eur=round(expected_hourly * expected_hours, 2),
        budget_eur=float(budget_eur),
        prices_as_of=str(table.get("as_of")),
        throughput_source=THROUGHPUT_SOURCE,
    )


def check_budget(estimate: CostEstimate) -> None:
    if estimate.worst_case_eur > estimate.budget_eur:
        raise GuardRefused(
            f"cost: bound {estimate.worst_case_eur:.2f} EUR exceeds budget_eur {estimate.budget_eur:g}: "
            f"{estimate.summary()}"
        )


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
    """The ``input_prefix`` param if given (e.g. the initial dataset), else that day's uploads."""
    prefix = (param or "").strip().lstrip("/")
    if not prefix:
        return uploads_prefix(upload_day)
    return prefix if prefix.endswith("/") else prefix + "/"


# -- what must exist in the account before a cluster is paid for ------------------------------------------
# AmazonEMRServicePolicy_v2 launches instances only in subnets (and creates its managed security groups only
# in VPCs) carrying this tag: without it RunJobFlow succeeds and the cluster fails minutes later.
EMR_MANAGED_TAG = ("for-use-with-amazon-emr-managed-policies", "true")


def require_variables(values: dict[str, str | None]) -> dict[str, str]:
    """The Airflow Variables the run cannot do without, all set; else one refusal naming every missing one.

    No fallback to EMR_DefaultRole / EMR_EC2_DefaultRole: infra/'s Airflow policy may pass only the stack's
    roles, so a default role would end in AccessDenied on RunJobFlow, retried for nothing."""
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        raise GuardRefused(
            f"Airflow Variable(s) {', '.join(missing)} not set: set them from the infra stack's outputs "
            "(docs/AWS.md, first-run checklist)"
        )
    return {name: str(value) for name, value in values.items()}


def _tags(resource: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags") or []}


def internet_route(subnet: dict, route_tables: list[dict]) -> str | None:
    """How the subnet's instances reach PyPI (the bootstrap pip-installs from it), or None.

    ``route_tables``: the subnet's explicitly associated route table, else its VPC's main one (EC2's rule).
    A default route to a NAT gateway works for any subnet; one to an internet gateway only when instances
    get a public IPv4 address (MapPublicIpOnLaunch), which EMR relies on in a public subnet."""
    explicit = [
        table
        for table in route_tables
        if any(a.get("SubnetId") == subnet["SubnetId"] for a in table.get("Associations", []))
    ]
    main = [table for table in route_tables if any(a.get("Main") for a in table.get("Associations", []))]
    for table in explicit or main:
        for route in table.get("Routes", []):
            if route.get("DestinationCidrBlock") != "0.0.0.0/0" or route.get("State", "active") != "active":
                continue
            if route.get("NatGatewayId"):
                return f"NAT gateway {route['NatGatewayId']} ({table['RouteTableId']})"
            gateway = route.get("GatewayId") or ""
            if gateway.startswith("igw-") and subnet.get("MapPublicIpOnLaunch"):
                return f"internet gateway {gateway} with public IPs ({table['RouteTableId']})"
    return None


def check_subnet(subnet: dict, vpc: dict, route_tables: list[dict], region: str, variable: str) -> str:
    """The cluster's subnet is usable by EMR's v2 managed policy and reaches the internet; returns how."""
    subnet_id = subnet["SubnetId"]
    key, value = EMR_MANAGED_TAG
    untagged = [
        f"{kind} {resource_id}"
        for kind, resource_id, resource in (("subnet", subnet_id, subnet), ("VPC", vpc.get("VpcId"), vpc))
        if _tags(resource).get(key) != value
    ]
    if untagged:
        raise GuardRefused(
            f"{' and '.join(untagged)} (Variable {variable}, {region}) lack the tag {key}={value}: "
            "AmazonEMRServicePolicy_v2 would not launch the cluster's instances there (aws ec2 create-tags "
            f"--resources {subnet_id} {vpc.get('VpcId')} --tags Key={key},Value={value})"
        )
    route = internet_route(subnet, route_tables)
    if route is None:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {variable}) has no route to the internet (a 0.0.0.0/0 route to a "
            "NAT gateway, or to an internet gateway with MapPublicIpOnLaunch): the bootstrap cannot pip "
            "install from PyPI"
        )
    return route


def encryption_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ServerSideEncryptionConfigurationNotFoundError":
            return []
        raise


def subnet_facts(ec2, subnet_id: str) -> tuple[dict, dict, list[dict]]:
    """(subnet, its VPC, the route tables that decide its routes) for ``guards.check_subnet``: the subnet's
    own association if it has one, else its VPC's main route table."""
    subnet = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
    vpc = ec2.describe_vpcs(VpcIds=[subnet["VpcId"]])["Vpcs"][0]
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])[
        "RouteTables"
    ]
    if not tables:
        tables = ec2.describe_route_tables(
            Filters=[
                {"Name": "vpc-id", "Values": [subnet["VpcId"]]},
                {"Name": "association.main", "Values": ["true"]},
            ]
        )["RouteTables"]
    return subnet, vpc, tables


def check_gdpr(s3, ec2, bucket: str, region: str, subnet_id: str, subnet_variable: str) -> tuple[str, str]:
    """Every check of a run's placement, before anything is created: EU region, bucket in it and encrypted,
    subnet usable by EMR. Returns (the bucket's encryption algorithm, how the subnet reaches PyPI)."""
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
    try:
        subnet, vpc, route_tables = subnet_facts(ec2, subnet_id)
    except (ClientError, BotoCoreError, IndexError) as error:
        raise GuardRefused(
            f"subnet {subnet_id} (Variable {subnet_variable}) not usable in {region}: {error}"
        ) from None
    return algorithm, check_subnet(subnet, vpc, route_tables, region, subnet_variable)
