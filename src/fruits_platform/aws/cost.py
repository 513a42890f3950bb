"""The cost guard of the EMR run: expected throughput, each step's limit, and the cost bound those limits
imply, checked against the run's budget.

Pure: no AWS call, no Airflow import. The DAG's ``check_budget`` task passes the facts it fetched (image
count, price table); a refusal is a one-line ``GuardRefused``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from fruits_platform.aws.bootstrap import BOOTSTRAP_TIMEOUT_SECONDS
from fruits_platform.aws.pricing import HOURS_PER_MONTH, instance_prices, spot_alternatives, vcpus_per_core
from fruits_platform.aws.refusal import GuardRefused
from fruits_spark.contract import STEP_NAMES, STEPS

# What each step costs per image and per MB of input is its record's (contract.STEPS, measured on one
# core of the development machine). An Intel vCPU (m5, m6i, c5, c6i) is half a physical core (hyperthread):
# a core-second is counted as two vCPU-seconds; a Graviton vCPU is a core (pricing.vcpus_per_core). Every
# family's core is counted as one development-machine core: measured on none of them.
VCPUS_PER_CORE = 2
THROUGHPUT_SOURCE = (
    "contract.STEPS: core-seconds per image (thumbnails, 2026-11-23) and per MB (2,000 phone photos of "
    "2.7 MB, 2026-11-30); 2 EMR vCPUs per core on x86, 1 on Graviton"
)
# EMR provisioning + bootstrap before the first step runs, expected: 900 s with the bootstrap's pip install
# from PyPI; installing from the staged wheelhouse saved 152 s and 51 s of it in two rounds on the (loaded)
# development VM (docs/BENCHMARKS.md, "Cluster bootstrap"): 900 - 100
CLUSTER_STARTUP_SECONDS = 800
# ... and enforced. Provisioning: watch_ingest's timeout includes the start-up limit (the teardown then
# terminates), and a Spot fleet switches to On-Demand after its 20 min (cluster.SPOT_TIMEOUT_MINUTES).
# Bootstrap: the action's own `timeout` on every node, which ends the cluster even with Airflow down.
PROVISIONING_LIMIT_SECONDS = 1200
STARTUP_LIMIT_SECONDS = PROVISIONING_LIMIT_SECONDS + BOOTSTRAP_TIMEOUT_SECONDS
# spark-submit, YARN application start and weights broadcast, per step
STEP_OVERHEAD_SECONDS = 120
# Each step is bounded twice by the same figure: on the cluster (`timeout` wraps its spark-submit, EMR marks
# it FAILED and TERMINATE_CLUSTER ends the cluster) and by its sensor. A step's limit is its share of the
# pipeline's expected compute x this factor, plus its overhead, at least the floor.
STEP_LIMIT_FACTOR = 3.0
STEP_LIMIT_FLOOR_SECONDS = 900
# a sensor notices the end of its step within one poke: slack over the step's bound so that the cluster
# side (which says why: exit 124 in the step's log) fires first
SENSOR_SLACK_SECONDS = 120
# terminate_cluster (or auto-termination) to instances gone: EMR bills until then. Added to the idle timeout
# in the bound: a cluster left idle is billed for the idle timeout, then for its termination.
TERMINATION_SECONDS = 600


@dataclass(frozen=True)
class CostEstimate:
    """The run's cost bound (what the budget is checked against) and its expectation.

    bound = every instance at its price cap (On-Demand, or the Spot max price the request sets, which is
    the On-Demand price) + EMR fee + its EBS volumes (+ public IPv4 where asked), for start-up limit + the
    steps' limits (of every day, for a range) + the idle timeout + the termination. Each of those durations
    is enforced by the run itself (sensor timeouts, `timeout` on the cluster and in the bootstrap,
    auto-termination), so the cluster cannot be billed longer: a real upper bound.
    The expectation uses the measured throughput and the typical Spot price instead.
    """

    instance_type: str
    instances: int
    use_spot: bool
    images: int
    image_bytes: int
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
    # a range of days on one cluster: each day's step limits, in day order (one entry for a daily run)
    day_step_limits: list[dict[str, int]] = field(default_factory=list)
    vcpus_per_core: int = VCPUS_PER_CORE
    # start-up and every step at the measured rates: when the outputs are written (the deadline's measure)
    finish_hours: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        market = "core on Spot capped at On-Demand" if self.use_spot else "On-Demand"
        return (
            f"{self.instances} x {self.instance_type} ({market}) at {self.hourly_eur:.3f} EUR/h "
            f"(instances {self.instance_hourly_eur:.3f} + EBS {self.ebs_gib_per_instance} GiB each "
            f"{self.ebs_hourly_eur:.3f} + public IPv4 {self.ipv4_hourly_eur:.3f}) x {self.hours:.2f} h "
            f"(startup limit {self.startup_hours:.2f} + {self.steps_text()} + slack = {self.run_hours:.2f} "
            f"+ idle timeout and termination {self.idle_hours:.2f}) = {self.worst_case_eur:.2f} EUR bound; "
            f"expected {self.expected_eur:.2f} EUR (for {self.images} images, "
            f"{self.image_bytes / 1e9:.2f} GB, at "
            f"{self.images_per_second:.0f} img/s, {self.expected_hours:.2f} h)"
        )

    def steps_text(self) -> str:
        if len(self.day_step_limits) > 1:
            return f"step limits of {len(self.day_step_limits)} days"
        return "step limits " + " + ".join(
            f"{name} {seconds / 3600:.2f}" for name, seconds in self.step_limits.items()
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


def ipv4_hourly_eur(table: dict, instances: int) -> float:
    return instances * float(table.get("public_ipv4_usd_per_hour", 0.0)) * float(table["usd_to_eur"])


def executor_vcpus(table: dict, instance_type: str, core_nodes: int) -> int:
    """vCPUs running Spark executors: the core nodes', or the primary's on a single-node cluster."""
    return int(instance_prices(table, instance_type)["vcpus"]) * max(core_nodes, 1)


def expected_step_seconds(
    images: int, image_bytes: int, vcpus: int, per_core: int = VCPUS_PER_CORE
) -> dict[str, float]:
    """Each step's expected compute (seconds, in pipeline order) for ``images`` files of ``image_bytes``
    in all, on ``vcpus`` executor vCPUs of ``per_core`` vCPUs per physical core."""
    megabytes = image_bytes / 1e6
    return {
        step.name: per_core
        * (images * step.core_seconds_per_image + megabytes * step.core_seconds_per_mb)
        / vcpus
        for step in STEPS
    }


def expected_compute_seconds(
    images: int, image_bytes: int, vcpus: int, per_core: int = VCPUS_PER_CORE
) -> float:
    return sum(expected_step_seconds(images, image_bytes, vcpus, per_core).values())


def expected_run_seconds(images: int, image_bytes: int, vcpus: int, per_core: int = VCPUS_PER_CORE) -> float:
    compute = expected_compute_seconds(images, image_bytes, vcpus, per_core)
    return len(STEP_NAMES) * STEP_OVERHEAD_SECONDS + compute


def step_limits(images: int, image_bytes: int, vcpus: int, per_core: int = VCPUS_PER_CORE) -> dict[str, int]:
    """What each step may take (seconds, in pipeline order), enforced on the cluster (`timeout`) and by
    its sensor: its expected compute x the factor, plus its overhead, at least the floor."""
    return {
        name: max(STEP_LIMIT_FLOOR_SECONDS, math.ceil(STEP_OVERHEAD_SECONDS + STEP_LIMIT_FACTOR * seconds))
        for name, seconds in expected_step_seconds(images, image_bytes, vcpus, per_core).items()
    }


def sensor_timeouts(limits: Mapping[str, int]) -> dict[str, int]:
    """Each watch_<step> sensor's timeout: its step's limit (+ poke slack); the first one also waits for
    the cluster's start-up, which nothing else bounds while Airflow is up."""
    return {
        name: limit + SENSOR_SLACK_SECONDS + (STARTUP_LIMIT_SECONDS if i == 0 else 0)
        for i, (name, limit) in enumerate(limits.items())
    }


def bound_hours(
    day_limits: Sequence[Mapping[str, int]], idle_timeout_seconds: int
) -> tuple[float, float, float]:
    """(start-up, steps, idle and termination) hours the run's limits allow at most: one start-up, every
    step of every day within its limit, then the idle timeout AND the termination (idle first, then ended)."""
    return (
        STARTUP_LIMIT_SECONDS / 3600,
        # each step within its limit, seen by its sensor within the slack; the sensors' timeouts sum to this
        sum(limit + SENSOR_SLACK_SECONDS for limits in day_limits for limit in limits.values()) / 3600,
        (idle_timeout_seconds + TERMINATION_SECONDS) / 3600,
    )


def days_of(images: int | Sequence[int], image_bytes: int | Sequence[int]) -> list[tuple[int, int]]:
    """(count, bytes) of each day a cluster processes: one pair for a daily run, one per day for a range."""
    if isinstance(images, int):
        return [(images, int(image_bytes))]  # type: ignore[arg-type]
    return list(zip(images, image_bytes, strict=True))  # type: ignore[arg-type]


def expected_finish_seconds(
    per_day: list[tuple[int, int]], vcpus: int, per_core: int = VCPUS_PER_CORE
) -> float:
    """Start-up and each day's steps at the measured rates: when the last day's outputs are written."""
    return CLUSTER_STARTUP_SECONDS + sum(
        expected_run_seconds(count, size, vcpus, per_core) for count, size in per_day
    )


def expected_cluster_hours(
    per_day: list[tuple[int, int]], vcpus: int, per_core: int = VCPUS_PER_CORE
) -> float:
    """Start-up, each day's steps at the measured rates, termination: the hours a run is expected to bill."""
    return (expected_finish_seconds(per_day, vcpus, per_core) + TERMINATION_SECONDS) / 3600


def expected_images_per_second(
    per_day: list[tuple[int, int]], vcpus: int, per_core: int = VCPUS_PER_CORE
) -> float:
    compute_seconds = sum(expected_compute_seconds(count, size, vcpus, per_core) for count, size in per_day)
    return round(sum(count for count, _ in per_day) / max(compute_seconds, 1e-9), 1)


def estimate_worst_case(
    table: dict,
    *,
    instance_type: str,
    core_nodes: int,
    use_spot: bool,
    images: int | Sequence[int],
    image_bytes: int | Sequence[int],
    idle_timeout_seconds: int,
    budget_eur: float,
    ebs_gib_per_instance: int,
    executor_cores: int | None = None,
    public_ipv4: bool = False,
) -> CostEstimate:
    """The cost bound from the limits the run enforces, and the expected cost (see ``CostEstimate``).

    ``images``, ``image_bytes``: the run's count and bytes, or each day's for a range on one cluster (each
    day's steps have their own limits). ``executor_cores``: the cores the executors really get (``sizing``
    may leave vCPUs without a Python worker when memory is short); default: every executor vCPU.
    ``public_ipv4``: nodes with public addresses (the private subnet the guard requires has none)."""
    vcpus = executor_cores or executor_vcpus(table, instance_type, core_nodes)
    per_core = vcpus_per_core(table, instance_type)
    instances = 1 + core_nodes
    per_day = days_of(images, image_bytes)
    day_limits = [step_limits(count, size, vcpus, per_core) for count, size in per_day]
    startup, run, idle = bound_hours(day_limits, idle_timeout_seconds)
    hours = startup + run + idle
    instance_rate = cluster_hourly_cap_eur(table, instance_type, core_nodes, use_spot)
    ebs_rate = ebs_hourly_eur(table, ebs_gib_per_instance, instances)
    ipv4_rate = ipv4_hourly_eur(table, instances) if public_ipv4 else 0.0
    hourly = instance_rate + ebs_rate + ipv4_rate
    expected_hours = expected_cluster_hours(per_day, vcpus, per_core)
    expected_hourly = cluster_hourly_eur(table, instance_type, core_nodes, use_spot) + ebs_rate + ipv4_rate
    return CostEstimate(
        instance_type=instance_type,
        instances=instances,
        use_spot=use_spot,
        images=sum(count for count, _ in per_day),
        image_bytes=sum(size for _, size in per_day),
        executor_vcpus=vcpus,
        images_per_second=expected_images_per_second(per_day, vcpus, per_core),
        startup_hours=round(startup, 4),
        run_hours=round(run, 4),
        idle_hours=round(idle, 4),
        hours=round(hours, 4),
        step_limits=day_limits[0],
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
        day_step_limits=day_limits,
        vcpus_per_core=per_core,
        finish_hours=round(expected_finish_seconds(per_day, vcpus, per_core) / 3600, 4),
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
