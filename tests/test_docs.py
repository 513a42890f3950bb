"""The figures README.md and docs/AWS.md quote are the code's: throughput, step shares, costs and bounds.

Each figure is recomputed here from the cost guard's constants and functions with the EMR DAG's default
cluster (1 primary + 2 core m5.xlarge, onnx), so that a re-measured constant fails this test until the
docs say the same."""

from __future__ import annotations

import re

import pytest

from fruits_platform.aws import cluster, pricing
from fruits_platform.aws import cost as costs
from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
AWS = (PROJECT_ROOT / "docs" / "AWS.md").read_text()
# the EMR DAG's defaults (instance_type, core_nodes, engine, budget_eur params)
INSTANCE_TYPE, CORE_NODES, ENGINE, BUDGET_EUR = "m5.xlarge", 2, "onnx", 10


def estimate(images: int, use_spot: bool = False):
    table = pricing.load_price_table()
    sizing = cluster.executor_sizing(table, INSTANCE_TYPE, CORE_NODES, ENGINE)
    return costs.estimate_worst_case(
        table,
        instance_type=INSTANCE_TYPE,
        core_nodes=CORE_NODES,
        use_spot=use_spot,
        images=images,
        idle_timeout_seconds=cluster.IDLE_TIMEOUT_SECONDS,
        budget_eur=BUDGET_EUR,
        ebs_gib_per_instance=cluster.EBS_GIB_PER_INSTANCE,
        executor_cores=sizing.total_executor_cores,
    )


def number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.parametrize(("name", "text"), [("README.md", README), ("docs/AWS.md", AWS)])
def test_the_throughput_per_vcpu_is_the_cost_guards(name, text):
    quoted = re.findall(r"(\d+(?:\.\d+)?) img/s per (?:EMR |executor )?vCPU", text)
    assert quoted, f"{name} quotes no throughput per vCPU"
    assert {float(q) for q in quoted} == {costs.IMAGES_PER_SECOND_PER_VCPU}, name


def test_the_step_shares_are_the_cost_guards():
    found = re.search(r"ingest\s+(\d+)\s*%,\s+features\s+(\d+)\s*%,\s+pca\s+(\d+)\s*%", AWS)
    assert found, "docs/AWS.md quotes no step shares"
    quoted = dict(zip(("ingest", "features", "pca"), map(int, found.groups()), strict=True))
    assert quoted == {step: round(100 * share) for step, share in costs.STEP_COMPUTE_SHARE.items()}


def test_the_example_bound_is_what_check_budget_prints():
    block = AWS.split("prints the bound with its parts, for example:", 1)[1].split("```")[1]
    example = " ".join(block.split())
    images = int(re.search(r"for (\d+) images", example).group(1))
    use_spot = "core on Spot" in example
    assert example == estimate(images, use_spot).summary()


def test_the_readme_cost_table_is_the_cost_guards():
    header = re.search(r"\| Images \| Expected run \(.*? images at (\d+) img/s", README)
    assert header
    assert float(header.group(1)) == estimate(2000).images_per_second
    rows = re.findall(
        r"^\| ([\d,]+) [^|]*\| ~(\d+) min \| ~([\d.]+) € \| ~([\d.]+) € \| ([\d.]+) € \|", README, re.M
    )
    assert len(rows) >= 3, "the README's cost table is missing"
    for images, minutes, on_demand, spot, bound in rows:
        planned, with_spot = estimate(int(number(images))), estimate(int(number(images)), use_spot=True)
        assert int(minutes) == round(planned.expected_hours * 60), images
        assert (float(on_demand), float(spot)) == (planned.expected_eur, with_spot.expected_eur), images
        assert float(bound) == planned.worst_case_eur, images
