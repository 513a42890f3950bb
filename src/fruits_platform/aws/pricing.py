"""Hourly prices of the EMR instance types the cost guard compares (general-purpose m*, compute-optimised c*;
x86 and Graviton), for the guard, the cluster choice (``aws.shapes``) and the run's cost report.

Source: AWS public list prices for region eu-west-3 (Paris), Linux, in USD per instance-hour (each row's
``source`` says whether its figures were read from the list or derived from us-east-1's):
  - EC2 On-Demand: https://aws.amazon.com/ec2/pricing/on-demand/
  - Amazon EMR fee (added on top of EC2): https://aws.amazon.com/emr/pricing/
  - Spot: no list price; the figure below is a typical Spot price (about 40 % of On-Demand, see
    https://aws.amazon.com/ec2/spot/instance-advisor/). Spot prices move: EMR caps a Spot bid at the
    On-Demand price, so the On-Demand column is the true ceiling.
As of PRICES_AS_OF; they were not re-read from the price list API when written (no network access): check
them with ``aws pricing get-products --region us-east-1 --service-code AmazonEC2 ...`` and override them
without a deploy through the Airflow Variable ``fruits_price_table`` (JSON, same shape as the
``PRICE_TABLE`` below; given keys replace the defaults, e.g.
``{"usd_to_eur": 0.9, "instances": {"m5.xlarge": {"ec2_spot_usd": 0.07}}}``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fruits_platform.aws import bootstrap
from fruits_platform.aws.refusal import GuardRefused
from fruits_spark.contract import engine_record

PRICES_REGION = "eu-west-3"
PRICES_AS_OF = "2025-06"
PRICES_SOURCE = "AWS list prices eu-west-3 (EC2 On-Demand Linux + Amazon EMR fee), USD per instance-hour"
# ECB reference rate, rounded; the budget is in euros, AWS bills in dollars
USD_TO_EUR = 0.92

# EBS gp3 storage, USD per GB-month, eu-west-3 (https://aws.amazon.com/ebs/pricing/): the root and data
# volumes of every node are billed per second of their life like the instances
EBS_GP3_USD_PER_GB_MONTH = 0.0928
# a public IPv4 address, USD per hour in every Region since 2024-02 (https://aws.amazon.com/vpc/pricing/):
# each node of a cluster in a public subnet gets one
PUBLIC_IPV4_USD_PER_HOUR = 0.005
HOURS_PER_MONTH = 730  # AWS bills GB-months over 730 hours

# Paris / N. Virginia price ratio of the listed m5.xlarge (0.224 / 0.192 USD/h): applied to the us-east-1 list
# price of the types below whose eu-west-3 price was not read from the price list
PARIS_RATIO = 0.224 / 0.192
# the table's typical Spot price as a share of On-Demand (m5.xlarge 0.090 / 0.224): what the expectation uses
TYPICAL_SPOT_SHARE = 0.40
# physical cores per vCPU: Intel vCPUs (m5, m6i, c5, c6i) are hyperthreads, two per core; a Graviton vCPU is a
# core (EC2 User Guide, "CPU options": default threads per core)
THREADS_PER_CORE = {"x86_64": 2, "arm64": 1}
# memory per vCPU (GiB): general-purpose (m) 4, compute-optimised (c) 2 (EC2 instance type specifications)
GIB_PER_VCPU = {"m": 4, "c": 2}
SIZES = {"xlarge": 4, "2xlarge": 8, "4xlarge": 16}
LISTED = f"eu-west-3 list price ({PRICES_AS_OF}); EMR fee: us-east-1's"


def _row(instance_type: str, on_demand: float, spot: float, emr: float, source: str) -> dict[str, Any]:
    """One type's prices (USD per instance-hour) and shape: vCPUs, memory, and where the prices come from."""
    vcpus = SIZES[instance_type.split(".", 1)[1]]
    return {
        "vcpus": vcpus,
        "memory_gib": vcpus * GIB_PER_VCPU[instance_type[0]],
        "ec2_on_demand_usd": on_demand,
        "ec2_spot_usd": spot,
        "emr_usd": emr,
        "source": source,
    }


def _derived(instance_type: str, us_east_1_usd: float, emr_usd: float) -> dict[str, Any]:
    """A type priced from its us-east-1 list price x PARIS_RATIO: NOT read from the eu-west-3 price list (no
    network access where it was written). TO RE-CHECK with `aws pricing get-products`, or override it with
    the Variable fruits_price_table."""
    on_demand = round(us_east_1_usd * PARIS_RATIO, 3)
    source = (
        f"derived: us-east-1 list {us_east_1_usd} USD/h x {PARIS_RATIO:.3f} (Paris/N. Virginia, m5.xlarge); "
        f"EMR fee: us-east-1's; Spot: {TYPICAL_SPOT_SHARE:.0%} of On-Demand; to re-check"
    )
    return _row(instance_type, on_demand, round(TYPICAL_SPOT_SHARE * on_demand, 3), emr_usd, source)


# us-east-1 list prices (EC2 On-Demand Linux, EMR fee) of the types whose eu-west-3 price is derived
_US_EAST_1: dict[str, tuple[float, float]] = {
    # Graviton2 and Graviton3, general-purpose
    "m6g.xlarge": (0.154, 0.039),
    "m6g.2xlarge": (0.308, 0.077),
    "m6g.4xlarge": (0.616, 0.154),
    "m7g.xlarge": (0.1632, 0.041),
    "m7g.2xlarge": (0.3264, 0.082),
    "m7g.4xlarge": (0.6528, 0.163),
    # compute-optimised: x86 (Intel) and Graviton
    "c5.xlarge": (0.17, 0.043),
    "c5.2xlarge": (0.34, 0.085),
    "c5.4xlarge": (0.68, 0.17),
    "c6i.xlarge": (0.17, 0.043),
    "c6i.2xlarge": (0.34, 0.085),
    "c6i.4xlarge": (0.68, 0.17),
    "c6g.xlarge": (0.136, 0.034),
    "c6g.2xlarge": (0.272, 0.068),
    "c6g.4xlarge": (0.544, 0.136),
    "c7g.xlarge": (0.145, 0.036),
    "c7g.2xlarge": (0.289, 0.072),
    "c7g.4xlarge": (0.578, 0.145),
}

PRICE_TABLE: dict[str, Any] = {
    "region": PRICES_REGION,
    "as_of": PRICES_AS_OF,
    "source": PRICES_SOURCE,
    "usd_to_eur": USD_TO_EUR,
    "ebs_gp3_usd_per_gb_month": EBS_GP3_USD_PER_GB_MONTH,
    "public_ipv4_usd_per_hour": PUBLIC_IPV4_USD_PER_HOUR,
    "instances": {
        # vcpus: what the throughput estimate multiplies; architecture (from the name) what the bootstrap's
        # wheels must exist for; Spot: a typical figure (40 % of On-Demand), not a quote
        "m5.xlarge": _row("m5.xlarge", 0.224, 0.090, 0.048, LISTED),
        "m5.2xlarge": _row("m5.2xlarge", 0.448, 0.180, 0.096, LISTED),
        "m5.4xlarge": _row("m5.4xlarge", 0.896, 0.360, 0.192, LISTED),
        "m6i.xlarge": _row("m6i.xlarge", 0.224, 0.090, 0.048, LISTED),
        "m6i.2xlarge": _row("m6i.2xlarge", 0.448, 0.180, 0.096, LISTED),
        "m6i.4xlarge": _row("m6i.4xlarge", 0.896, 0.360, 0.192, LISTED),
        **{name: _derived(name, *prices) for name, prices in _US_EAST_1.items()},
    },
}
# The bootstrap installs with --only-binary: a node architecture can run an engine only if every pin of the
# engine's requirements file has a manylinux wheel for it (Python 3.11). aarch64, checked:
#   requirements-emr.txt (onnx): 2026-11-23 `pip download --platform manylinux2014_aarch64 ...` fetched all 19
#     pins; 2026-11-29 bootstrap.build_wheelhouse(requirements-emr.txt, "aarch64") too (docs/AWS.md, Graviton)
#   requirements-emr-tensorflow.txt: tensorflow-cpu==2.21.0 has no aarch64 wheel (TensorFlow ships arm64 Linux
#     wheels as `tensorflow`): Graviton stays refused for engine=tensorflow
AARCH64_REQUIREMENTS_CHECKED = ("requirements-emr.txt",)


def architecture(instance_type: str) -> str:
    return "arm64" if bootstrap.architecture(instance_type) == "aarch64" else "x86_64"


def engine_architectures(engine: str) -> tuple[str, ...]:
    """The node architectures the engine's bootstrap requirements have every wheel for."""
    requirements = engine_record(engine).requirements
    return ("x86_64", "arm64") if requirements in AARCH64_REQUIREMENTS_CHECKED else ("x86_64",)


def check_engine_architecture(instance_type: str, engine: str) -> None:
    """GuardRefused when the run's nodes could not install the engine's runtime (Graviton for tensorflow)."""
    arch = architecture(instance_type)
    if arch not in engine_architectures(engine):
        raise GuardRefused(
            f"instance_type {instance_type} is {arch} (Graviton): engine {engine}'s runtime "
            f"({engine_record(engine).requirements}) has no {arch} wheel for every pin; pin an x86_64 "
            "type or leave instance_type at auto"
        )


def vcpus_per_core(table: dict[str, Any], instance_type: str) -> int:
    """vCPUs per physical core of the type: a row's own figure, else its architecture's."""
    row = instance_prices(table, instance_type)
    return int(row.get("vcpus_per_core", THREADS_PER_CORE[architecture(instance_type)]))


# what the DAG's instance_type param offers (besides auto): every priced type; engine_architectures decides
# which of them a run may use
INSTANCE_TYPES: tuple[str, ...] = tuple(PRICE_TABLE["instances"])


def spot_alternatives(table: dict[str, Any], instance_type: str) -> tuple[str, ...]:
    """The instance types a Spot core fleet may use for ``instance_type``: it first, then the offered types
    of the same architecture, size, vCPUs, memory and cores (same executor sizing, same bootstrap wheels, same
    expected pace). Several types let price-capacity-optimized find Spot capacity where a single type would
    wait or be reclaimed."""
    wanted = table["instances"][instance_type]
    size = instance_type.split(".", 1)[-1]
    others = [
        name
        for name in INSTANCE_TYPES
        if name != instance_type
        and name in table["instances"]
        and name.split(".", 1)[-1] == size
        and name[0] == instance_type[0]
        and architecture(name) == architecture(instance_type)
        and table["instances"][name]["vcpus"] == wanted["vcpus"]
        and table["instances"][name].get("memory_gib") == wanted.get("memory_gib")
        and vcpus_per_core(table, name) == vcpus_per_core(table, instance_type)
    ]
    return (instance_type, *others)


class PriceTableError(ValueError):
    """The price table (or its Variable override) is unusable; the message says why, in one line."""


def load_price_table(override: str | dict | None = None) -> dict[str, Any]:
    """The default table with ``override`` (the Variable's JSON text, or a dict) merged over it."""
    table = copy.deepcopy(PRICE_TABLE)
    if override in (None, "", {}):
        return table
    try:
        patch = json.loads(override) if isinstance(override, str) else override
    except json.JSONDecodeError as error:
        raise PriceTableError(f"Variable fruits_price_table is not valid JSON: {error}") from None
    if not isinstance(patch, dict):
        raise PriceTableError("Variable fruits_price_table must be a JSON object")
    for key, value in patch.items():
        if key == "instances":
            if not isinstance(value, dict):
                raise PriceTableError("fruits_price_table.instances must be an object")
            for instance_type, prices in value.items():
                table["instances"].setdefault(instance_type, {}).update(prices)
        else:
            table[key] = value
    for instance_type, prices in table["instances"].items():
        missing = {"vcpus", "ec2_on_demand_usd", "ec2_spot_usd", "emr_usd"} - set(prices)
        if missing:
            raise PriceTableError(f"fruits_price_table: {instance_type} lacks {', '.join(sorted(missing))}")
    return table


def instance_prices(table: dict[str, Any], instance_type: str) -> dict[str, float]:
    try:
        return table["instances"][instance_type]
    except KeyError:
        known = ", ".join(sorted(table["instances"]))
        raise PriceTableError(f"no price for instance type {instance_type} (known: {known})") from None
