"""The cost figures README.md and docs/AWS.md quote are the code's.

Each figure is recomputed with the cost guard's functions (aws/cost.py, the step records of
contract.STEPS) from the inputs the doc itself states (image count, bytes, core nodes), on the EMR DAG's
default cluster (1 primary + N core m5.xlarge, onnx engine, 10 EUR budget), so that a re-measured step or a
changed price fails here, naming the doc line, until the docs say the same."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest

from fruits_platform.aws import cluster, pricing
from fruits_platform.aws import cost as costs
from fruits_spark.contract import STEPS
from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
AWS = PROJECT_ROOT / "docs" / "AWS.md"
# the EMR DAG's defaults (instance_type, core_nodes, engine, budget_eur params)
INSTANCE_TYPE, CORE_NODES, ENGINE, BUDGET_EUR = "m5.xlarge", 2, "onnx", 10.0
UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9}


@lru_cache
def table() -> dict:
    return pricing.load_price_table()


def estimate(images: int, image_bytes: float, core_nodes: int = CORE_NODES, use_spot: bool = False):
    sizing = cluster.executor_sizing(table(), INSTANCE_TYPE, core_nodes, ENGINE)
    return costs.estimate_worst_case(
        table(),
        instance_type=INSTANCE_TYPE,
        core_nodes=core_nodes,
        use_spot=use_spot,
        images=images,
        image_bytes=round(image_bytes),
        idle_timeout_seconds=cluster.IDLE_TIMEOUT_SECONDS,
        budget_eur=BUDGET_EUR,
        ebs_gib_per_instance=cluster.EBS_GIB_PER_INSTANCE,
        executor_cores=sizing.total_executor_cores,
    )


def lines_matching(path, pattern: str) -> list[tuple[str, re.Match]]:
    """(``path:line``, match) for every line of the doc that matches ``pattern``."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.search(pattern, line)
        if match:
            found.append((f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}", match))
    return found


def only_line(path, pattern: str) -> tuple[str, re.Match]:
    found = lines_matching(path, pattern)
    assert len(found) == 1, f"{path.name}: expected one line matching {pattern!r}, found {len(found)}"
    return found[0]


def number(text: str) -> float:
    return float(text.replace(",", ""))


def stated_duration_matches(text: str, hours: float) -> bool:
    """``~31 min`` or ``~4.7 h``, as the README rounds them."""
    value, unit = re.fullmatch(r"~([\d.]+) (min|h)", text).groups()
    return round(hours * 60) == int(value) if unit == "min" else round(hours, 1) == float(value)


# | 2,000 thumbnails, 10 MB (...) | ~31 min | ~0.42 € | ~0.29 € | 1.28 € |
COST_ROW = (
    r"^\| ([\d,]+) (thumbnails|phone photos), ([\d.]+) (KB|MB|GB)(?:, on 1 \+ (\d+) core nodes)?[^|]*"
    r"\| (~[\d.]+ (?:min|h)) \| (?:~([\d.]+) €)? \| ~([\d.]+) € \| ([\d.]+) €([^|]*)\|$"
)


def readme_cost_rows() -> list:
    rows = lines_matching(README, COST_ROW)
    table_lines = lines_matching(README, r"^\| [\d,]+ (thumbnails|phone photos)")
    # a row the pattern no longer reads would silently escape the check
    assert len(rows) == len(table_lines) >= 5, "README.md's cost table rows do not parse"
    return [pytest.param(where, row, id=where.split(": ")[0]) for where, row in rows]


@pytest.mark.parametrize(("where", "row"), readme_cost_rows())
def test_each_row_of_the_readme_cost_table_is_the_cost_guards(where, row):
    images, _kind, size, unit, core_nodes, run, on_demand, spot, bound, remark = row.groups()
    images, image_bytes = int(number(images)), number(size) * UNITS[unit]
    core_nodes = int(core_nodes or CORE_NODES)
    planned = estimate(images, image_bytes, core_nodes)
    with_spot = estimate(images, image_bytes, core_nodes, use_spot=True)
    hours = planned.expected_hours
    assert stated_duration_matches(run, hours), f"{where}: code expects {hours} h"
    if on_demand is not None:
        assert float(on_demand) == planned.expected_eur, f"{where}: code says {planned.expected_eur} €"
    assert float(spot) == with_spot.expected_eur, f"{where}: code says {with_spot.expected_eur} € with Spot"
    assert float(bound) == planned.worst_case_eur, f"{where}: code says a bound of {planned.worst_case_eur} €"
    # Spot core nodes are capped at the On-Demand price: the same bound (the column has one figure)
    spot_bound = with_spot.worst_case_eur
    assert spot_bound == planned.worst_case_eur, f"{where}: Spot bound {spot_bound}"
    refused = planned.worst_case_eur > BUDGET_EUR
    assert refused == ("refused" in remark), f"{where}: refused by a {BUDGET_EUR:g} € budget: {refused}"


def readme_image_sizes() -> tuple[float, float]:
    """(thumbnail, phone photo) bytes, as the cost table's header states them."""
    _, match = only_line(README, r"thumbnails ~([\d.]+) KB, 12 MP phone photos ~([\d.]+) MB")
    return number(match.group(1)) * 1e3, number(match.group(2)) * 1e6


def test_the_readme_figures_around_the_table_are_the_cost_guards():
    thumbnail, _ = readme_image_sizes()
    where, match = only_line(README, r"Thumbnails at ~(\d+) img/s on the cluster")
    thumbnails = estimate(2000, 2000 * thumbnail)
    assert int(match.group(1)) == round(thumbnails.images_per_second), (
        f"{where}: code says {thumbnails.images_per_second}"
    )

    where, match = only_line(README, r"core-seconds per image \(thumbnails: ([\d.]+) for the three steps")
    per_image = sum(step.core_seconds_per_image for step in STEPS)
    assert float(match.group(1)) == round(per_image, 2), f"{where}: contract.STEPS sum to {per_image}"

    where, match = only_line(README, r"([\d.]+) core-seconds a MB")
    per_mb = {step.name: step.core_seconds_per_mb for step in STEPS}
    # only ingest reads the originals; the README says so
    assert per_mb == {**dict.fromkeys(per_mb, 0.0), "ingest": float(match.group(1))}, f"{where}: {per_mb}"

    where, match = only_line(README, r"A 12 MP photo of ([\d.]+) MB costs about (\d+) thumbnails")
    vcpus = thumbnails.executor_vcpus
    photo = costs.expected_compute_seconds(1, number(match.group(1)) * 1e6, vcpus)
    ratio = photo / costs.expected_compute_seconds(1, thumbnail, vcpus)
    assert int(match.group(2)) == round(ratio), f"{where}: code says {ratio:.1f} thumbnails"

    where, match = only_line(README, r"([\d.]+) €/h per instance, ([\d.]+) €/h for the cluster")
    instance, whole = (costs.cluster_hourly_eur(table(), INSTANCE_TYPE, n, False) for n in (0, CORE_NODES))
    assert (float(match.group(1)), float(match.group(2))) == (round(instance, 2), round(whole, 2)), where


def largest_accepted(image_bytes: float) -> int:
    """The most images of ``image_bytes`` each whose bound fits the budget (the bound grows with them)."""
    low, high = 1, 10**8
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(middle, middle * image_bytes).worst_case_eur <= BUDGET_EUR:
            low = middle
        else:
            high = middle - 1
    return low


def test_the_readme_says_how_many_images_the_budget_accepts():
    where, match = only_line(README, r"accept about ([\d,]+) thumbnails or ([\d,]+) phone photos")
    for stated, image_bytes in zip(match.groups(), readme_image_sizes(), strict=True):
        largest = largest_accepted(image_bytes)
        # "about": within 15 % of what the guard really accepts
        assert abs(number(stated) - largest) <= 0.15 * largest, f"{where}: the guard accepts {largest}"


def test_the_per_step_figures_of_aws_md_are_the_step_records():
    rows = lines_matching(AWS, r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|$")
    quoted = {match.group(1): (float(match.group(2)), float(match.group(3))) for _, match in rows}
    records = {step.name: (step.core_seconds_per_image, step.core_seconds_per_mb) for step in STEPS}
    assert quoted == records, f"docs/AWS.md's per-step table {[where for where, _ in rows]} vs contract.STEPS"


def test_the_throughputs_aws_md_quotes_are_the_cost_guards():
    where, match = only_line(AWS, r"that is ~(\d+) img/s for thumbnails of (\d+) KB and ~([\d.]+) img/s for")
    thumbnails = estimate(1000, 1000 * int(match.group(2)) * 1e3)
    assert int(match.group(1)) == round(thumbnails.images_per_second), (
        f"{where}: code says {thumbnails.images_per_second}"
    )
    vcpus_at, vcpus = only_line(AWS, r"On the default cluster \((\d+) executor vCPUs\)")
    assert int(vcpus.group(1)) == thumbnails.executor_vcpus, (
        f"{vcpus_at}: code says {thumbnails.executor_vcpus}"
    )
    _, photo = only_line(AWS, r"12 MP phone photos of ([\d.]+) MB\.")
    photos = estimate(1000, 1000 * float(photo.group(1)) * 1e6)
    assert float(match.group(3)) == photos.images_per_second, f"{where}: code says {photos.images_per_second}"


def test_the_step_limit_formula_of_aws_md_is_the_cost_guards():
    where, match = only_line(AWS, r"Step limit = max\((\d+) min, (\d+) min \+ ([\d.]+) x the step's expected")
    floor, overhead, factor = match.groups()
    assert int(floor) * 60 == costs.STEP_LIMIT_FLOOR_SECONDS, where
    assert int(overhead) * 60 == costs.STEP_OVERHEAD_SECONDS, where
    assert float(factor) == costs.STEP_LIMIT_FACTOR, where
    where, match = only_line(AWS, r"A step's expected compute = (\d+) x \(images")
    assert int(match.group(1)) == costs.VCPUS_PER_CORE, where


def test_the_example_bound_of_aws_md_is_what_check_budget_prints():
    block = AWS.read_text().split("prints the bound with its parts, for example:", 1)[1].split("```")[1]
    example = " ".join(block.split())
    images, gigabytes = re.search(r"for (\d+) images, ([\d.]+) GB", example).groups()
    use_spot = "core on Spot" in example
    printed = estimate(int(images), float(gigabytes) * 1e9, use_spot=use_spot).summary()
    assert example == printed, f"docs/AWS.md's example bound is stale; check_budget prints:\n{printed}"
