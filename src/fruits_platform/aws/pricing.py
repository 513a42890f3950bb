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

PRICE_TABLE: dict[str, Any] = {
    "region": PRICES_REGION,
    "as_of": PRICES_AS_OF,
    "source": PRICES_SOURCE,
    "usd_to_eur": USD_TO_EUR,
    "instances": {
        # vcpus: what the throughput estimate multiplies
        "m5.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.224, "ec2_spot_usd": 0.090, "emr_usd": 0.048},
        "m5.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.448, "ec2_spot_usd": 0.180, "emr_usd": 0.096},
        "m5.4xlarge": {"vcpus": 16, "ec2_on_demand_usd": 0.896, "ec2_spot_usd": 0.360, "emr_usd": 0.192},
        "m6i.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.224, "ec2_spot_usd": 0.090, "emr_usd": 0.048},
        "m6i.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.448, "ec2_spot_usd": 0.180, "emr_usd": 0.096},
        "m6i.4xlarge": {"vcpus": 16, "ec2_on_demand_usd": 0.896, "ec2_spot_usd": 0.360, "emr_usd": 0.192},
        # Graviton (arm64): priced, but not offered by the DAG (below) until the bootstrap's pinned wheels
        # (tensorflow-cpu) are checked on aarch64
        "m7g.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.190, "ec2_spot_usd": 0.076, "emr_usd": 0.041},
        "m7g.2xlarge": {"vcpus": 8, "ec2_on_demand_usd": 0.381, "ec2_spot_usd": 0.152, "emr_usd": 0.082},
    },
}
# what the DAG's instance_type param offers: x86_64 only, like bootstrap/requirements-emr.txt
INSTANCE_TYPES: tuple[str, ...] = tuple(
    name for name in PRICE_TABLE["instances"] if not name.startswith("m7g.")
)


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
