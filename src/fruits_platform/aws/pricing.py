"""Hourly prices of the EMR instance types the DAG offers, for the cost guard and the run's cost report.

Source: AWS public list prices for region eu-west-3 (Paris), Linux, in USD per instance-hour:
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

PRICE_TABLE: dict[str, Any] = {
    "region": PRICES_REGION,
    "as_of": PRICES_AS_OF,
    "source": PRICES_SOURCE,
    "usd_to_eur": USD_TO_EUR,
    "ebs_gp3_usd_per_gb_month": EBS_GP3_USD_PER_GB_MONTH,
    "public_ipv4_usd_per_hour": PUBLIC_IPV4_USD_PER_HOUR,
    "instances": {
        # vcpus: what the throughput estimate multiplies; arch: what the bootstrap's wheels must exist for
        "m5.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.224, "ec2_spot_usd": 0.090, "emr_usd": 0.048},
        "m5.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.448, "ec2_spot_usd": 0.180, "emr_usd": 0.096},
        "m5.4xlarge": {"vcpus": 16, "ec2_on_demand_usd": 0.896, "ec2_spot_usd": 0.360, "emr_usd": 0.192},
        "m6i.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.224, "ec2_spot_usd": 0.090, "emr_usd": 0.048},
        "m6i.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.448, "ec2_spot_usd": 0.180, "emr_usd": 0.096},
        "m6i.4xlarge": {"vcpus": 16, "ec2_on_demand_usd": 0.896, "ec2_spot_usd": 0.360, "emr_usd": 0.192},
        # Graviton (arm64). NOT verified online (no access to the price list from here): eu-west-3 figures
        # derived from the us-east-1 list prices (m6g.xlarge 0.154, m7g.xlarge 0.1632 USD/h) x 1.167, the
        # Paris / N. Virginia ratio of m5.xlarge (0.224 / 0.192); EMR fees are the us-east-1 ones, as for m5
        # above. TO RE-CHECK with `aws pricing get-products` before relying on them (or override them with
        # the Variable fruits_price_table).
        "m6g.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.180, "ec2_spot_usd": 0.072, "emr_usd": 0.039},
        "m6g.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.359, "ec2_spot_usd": 0.144, "emr_usd": 0.077},
        "m6g.4xlarge": {"vcpus": 16, "ec2_on_demand_usd": 0.719, "ec2_spot_usd": 0.288, "emr_usd": 0.154},
        "m7g.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.190, "ec2_spot_usd": 0.076, "emr_usd": 0.041},
        "m7g.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.381, "ec2_spot_usd": 0.152, "emr_usd": 0.082},
        "m7g.4xlarge": {"vcpus": 16, "ec2_on_demand_usd": 0.762, "ec2_spot_usd": 0.305, "emr_usd": 0.163},
    },
}
GRAVITON_FAMILIES = ("m6g", "m7g")
# Graviton types are offered only once every pin of bootstrap/requirements-emr.txt has a manylinux aarch64
# wheel for Python 3.11 (the bootstrap installs with --only-binary). Checked 2026-11-23 with
#   pip download --platform manylinux2014_aarch64 --only-binary=:all: --python-version 3.11 --no-deps \
#     -r bootstrap/requirements-emr.txt
# tensorflow-cpu==2.21.0 has no aarch64 wheel (TensorFlow ships arm64 Linux wheels as `tensorflow`, not
# `tensorflow-cpu`); see docs/AWS.md for the ONNX Runtime pins. Flip this once the check passes.
GRAVITON_WHEELS_CHECKED = False


def architecture(instance_type: str) -> str:
    return "arm64" if instance_type.split(".", 1)[0] in GRAVITON_FAMILIES else "x86_64"


# what the DAG's instance_type param offers
INSTANCE_TYPES: tuple[str, ...] = tuple(
    name for name in PRICE_TABLE["instances"] if architecture(name) == "x86_64" or GRAVITON_WHEELS_CHECKED
)


def spot_alternatives(table: dict[str, Any], instance_type: str) -> tuple[str, ...]:
    """The instance types a Spot core fleet may use for ``instance_type``: it first, then the offered types
    of the same architecture, size and vCPUs (same executor sizing, same bootstrap wheels). Several types
    let price-capacity-optimized find Spot capacity where a single type would wait or be reclaimed."""
    wanted = table["instances"][instance_type]
    size = instance_type.split(".", 1)[-1]
    others = [
        name
        for name in INSTANCE_TYPES
        if name != instance_type
        and name in table["instances"]
        and name.split(".", 1)[-1] == size
        and architecture(name) == architecture(instance_type)
        and table["instances"][name]["vcpus"] == wanted["vcpus"]
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
