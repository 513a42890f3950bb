"""The cost figures README.md and docs/AWS.md quote are the code's.

Each figure is recomputed with the cost guard's functions (aws/cost.py, aws/shapes.py, the step records of
contract.STEPS) from the inputs the doc itself states (image count, bytes, pinned params): the cluster the
guard chooses for a night, or 1 primary + N core m5.xlarge where the doc says so (the old default; onnx
engine, 10 EUR budget), so that a re-measured step, a changed price or another choice fails here, naming the
doc line, until the docs say the same."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest

from fruits_platform.aws import cluster, pricing, shapes
from fruits_platform.aws import cost as costs
from fruits_spark.contract import STEPS
from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
AWS = PROJECT_ROOT / "docs" / "AWS.md"
# the figures quoted for a pinned shape: 1 + 2 m5.xlarge (the old default), the default engine and budget
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


# | 2,000 thumbnails, 10 MB (...) | 1 x m6g.xlarge (single node) | ~22 min | ~0.11 € | 0.44 € |
# | 100,000 phone photos, 250 GB, engine=tensorflow | 1 x m5.2xlarge (single node) | ~72 min | ~0.70 € | …
COST_ROW = (
    r"^\| \**([\d,]+) (thumbnails|phone photos), ([\d.]+) (KB|MB|GB)((?:, \w+=[\w.]+)*)[^|]*\| "
    r"\**([^|*]+?)\** \| ~(\d+) min \| \**~([\d.]+) €\** \| ([\d.]+) € \|$"
)


def pins_of(text: str) -> dict:
    """``, engine=tensorflow, core_nodes=2, use_spot=false`` as the run's param values."""
    values = dict(pair.split("=", 1) for pair in text.split(", ") if pair)
    typed = {"true": True, "false": False}
    return {k: typed.get(v, int(v) if v.isdigit() else v) for k, v in values.items()}


def readme_cost_rows() -> list:
    rows = lines_matching(README, COST_ROW)
    table_lines = lines_matching(README, r"^\| \**[\d,]+ (thumbnails|phone photos)")
    # a row the pattern no longer reads would silently escape the check
    assert len(rows) == len(table_lines) >= 5, "README.md's cost table rows do not parse"
    return [pytest.param(where, row, id=where.split(": ")[0]) for where, row in rows]


@pytest.mark.parametrize(("where", "row"), readme_cost_rows())
def test_each_row_of_the_readme_cost_table_is_the_cost_guards(where, row):
    """Each night's cluster is the one the guard chooses (or the params the row pins), with its expected
    time to outputs, its expected cost (start-up and termination included) and its bound."""
    images, _kind, size, unit, pinned, label, minutes, expected, bound = row.groups()
    images, image_bytes = int(number(images)), round(number(size) * UNITS[unit])
    run = {"engine": ENGINE, **pins_of(pinned.removeprefix(", "))}
    choice = shapes.choose(table(), images=images, image_bytes=image_bytes, budget_eur=BUDGET_EUR, **run)
    estimate = choice.estimate
    assert label == choice.shape.label(), f"{where}: the guard chooses {choice.shape.label()}"
    assert int(minutes) == round(estimate.finish_hours * 60), (
        f"{where}: code expects {estimate.finish_hours} h"
    )
    assert float(expected) == estimate.expected_eur, f"{where}: code says {estimate.expected_eur} €"
    assert float(bound) == estimate.worst_case_eur, (
        f"{where}: code says a bound of {estimate.worst_case_eur} €"
    )


def phone_night():
    """The README's 100,000 phone photos, as the guard chooses their cluster."""
    _, photo = readme_image_sizes()
    return shapes.choose(
        table(), engine=ENGINE, images=100_000, image_bytes=round(100_000 * photo), budget_eur=BUDGET_EUR
    )


def test_what_100000_phone_photos_cost_and_what_015_eur_would_take_are_the_cost_guards():
    """The README's targets paragraph: the chosen night's cost and its parts, the x86 alternative, and what
    0.15 EUR would take (ingest's core-seconds, the fixed part's seconds), each from the guard's functions."""
    choice = phone_night()
    where, match = only_line(
        README, r"100,000 phone photos cost ~([\d.]+) € with start-up, (under|above) the ([\d.]+)"
    )
    stated, side, target = float(match.group(1)), match.group(2), float(match.group(3))
    assert stated == choice.estimate.expected_eur, where
    assert side == ("under" if stated < target else "above"), f"{where}: {stated} € vs {target} €"
    assert pricing.architecture(choice.shape.instance_type) == "arm64", f"{where}: says Graviton"
    _, photo = readme_image_sizes()
    x86 = shapes.choose(
        table(),
        engine=ENGINE,
        images=100_000,
        image_bytes=round(100_000 * photo),
        budget_eur=BUDGET_EUR,
        instance_type=INSTANCE_TYPE,
    )
    where, match = only_line(README, r"On x86 the cheapest is ~([\d.]+) €")
    assert float(match.group(1)) == x86.estimate.expected_eur, where
    parts = shapes.breakdown(choice.chosen)
    where, match = only_line(README, r"the start-up \(~([\d.]+) €\),$")
    assert float(match.group(1)) == round(parts["startup"], 2), f"{where}: {parts}"
    where, match = only_line(
        README, r"the steps' fixed overheads \(~([\d.]+) €\), features, quality, pca and publish \(~([\d.]+)"
    )
    compute = sum(
        value for name, value in parts.items() if name.startswith("compute_") and name != "compute_ingest"
    )
    assert (float(match.group(1)), float(match.group(2))) == (
        round(parts["step_overheads"], 2),
        round(compute, 2),
    )
    where, match = only_line(README, r"and the termination \(~([\d.]+) €\)")
    assert float(match.group(1)) == round(parts["termination"], 2), where
    needed = shapes.ingest_needed(
        table(), 0.15, engine=ENGINE, images=100_000, image_bytes=round(100_000 * photo)
    )
    if needed is None:
        # the other parts cost more than the target already: the README must say so, not quote a figure
        only_line(README, r"even an ingest that cost nothing would not reach 0\.15 €")
    else:
        where, match = only_line(
            README, r"ingest would have to cost at most ([\d.]+) core-seconds a photo, against"
        )
        assert float(match.group(1)) == round(needed[0], 4), f"{where}: code says {needed}"
    where, match = only_line(README, r"^([\d.]+) now \(([\d.]+) \+ ([\d.]+) MB x ([\d.]+)\)")
    ingest = next(step for step in STEPS if step.name == "ingest")
    measured = ingest.core_seconds_per_image + photo / 1e6 * ingest.core_seconds_per_mb
    assert float(match.group(1)) == round(measured, 3), where
    assert (float(match.group(2)), float(match.group(4))) == (
        ingest.core_seconds_per_image,
        ingest.core_seconds_per_mb,
    )
    where, match = only_line(README, r"at ([\d.]+) core-seconds a photo \(`inspect_image`")
    fixed = shapes.fixed_seconds_for(choice.chosen, 0.15, float(match.group(1)))
    now = costs.CLUSTER_STARTUP_SECONDS + len(STEPS) * costs.STEP_OVERHEAD_SECONDS + costs.TERMINATION_SECONDS
    if fixed <= 0:
        # the steps' compute alone costs more than the target with that ingest: the README must say so
        only_line(README, r"even a fixed part of 0 s would not reach 0\.15 €")
        where, match = only_line(README, r"start-up, step overheads and termination \(([\d,]+) s now\)")
        assert int(number(match.group(1))) == now, f"{where}: code says {now} s"
    else:
        where, match = only_line(README, r"would have to fit in ~([\d,]+) s instead of ([\d,]+) s")
        assert int(number(match.group(1))) == round(fixed, -1), f"{where}: code says {fixed:.0f} s"
        assert int(number(match.group(2))) == now, f"{where}: code says {now} s"


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

    where, match = only_line(README, r"core-seconds per image \(thumbnails: ([\d.]+) for the steps")
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
    vcpus_at, vcpus = only_line(AWS, r"On 1 \+ 2 m5.xlarge \((\d+) executor vCPUs\)")
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


def test_the_range_figures_of_aws_md_are_the_cost_guards():
    """A range on one cluster: the pinned 3 x m5.xlarge example against daily runs, and the shape the
    guard chooses for 30 days (the range's total, the range's deadline) against 30 daily runs."""
    text = " ".join(AWS.read_text().split())
    thumbnail, photo = readme_image_sizes()
    pinned = {"instance_type": INSTANCE_TYPE, "core_nodes": CORE_NODES, "use_spot": False}
    match = re.search(
        r"(\d+) days of ([\d,]+) images on 3 x m5.xlarge are bounded at ([\d.]+) EUR \(expected ([\d.]+) "
        r"EUR\), against \d+ x ([\d.]+) EUR \(expected \d+ x ([\d.]+) EUR\)",
        text,
    )
    days, images = int(match.group(1)), int(number(match.group(2)))
    run = {"engine": ENGINE, "budget_eur": BUDGET_EUR, **pinned}
    deadline = shapes.RANGE_DEADLINE_SECONDS
    both = shapes.choose(
        table(),
        images=[images] * days,
        image_bytes=[round(images * thumbnail)] * days,
        **run,
        deadline_seconds=deadline,
    ).estimate
    one = shapes.choose(table(), images=images, image_bytes=round(images * thumbnail), **run).estimate
    stated = tuple(float(match.group(i)) for i in range(3, 7))
    assert stated == (both.worst_case_eur, both.expected_eur, one.worst_case_eur, one.expected_eur), match[0]

    match = re.search(
        r"(\d+) days of ([\d,]+) phone photos run on (.+?\)): outputs after ~([\d.]+) h, expected ([\d.]+) "
        r"EUR \(bound ([\d.]+) EUR\), against \d+ x ([\d.]+) EUR as daily runs",
        text,
    )
    days, images = int(match.group(1)), int(number(match.group(2)))
    chosen = shapes.choose(
        table(),
        engine=ENGINE,
        images=[images] * days,
        image_bytes=[round(images * photo)] * days,
        budget_eur=BUDGET_EUR,
        deadline_seconds=deadline,
    )
    daily = shapes.choose(
        table(), engine=ENGINE, images=images, image_bytes=round(images * photo), budget_eur=BUDGET_EUR
    )
    assert match.group(3) == chosen.shape.label(), match[0]
    estimate = chosen.estimate
    assert float(match.group(4)) == round(estimate.finish_hours, 1), match[0]
    stated = (float(match.group(5)), float(match.group(6)), float(match.group(7)))
    assert stated == (estimate.expected_eur, estimate.worst_case_eur, daily.estimate.expected_eur), match[0]


# "start-up ~13 min", "~13 min of cluster start-up", "the ~13 min cluster start"
STARTUP_MINUTES = (
    r"(?i)(?:start-up|startup|cluster start)\D{0,40}?~(\d+) min"
    r"|~(\d+) min (?:of )?(?:cluster )?(?:start-up|startup|start)"
)


def test_every_start_up_figure_is_the_cost_models():
    """One start-up figure, the one the cost guard's expectation uses (cost.CLUSTER_STARTUP_SECONDS):
    README.md and docs/AWS.md used to say ~15, ~13 and ~12 min in different places."""
    minutes = round(costs.CLUSTER_STARTUP_SECONDS / 60)
    quoted = [
        (where, int(match.group(1) or match.group(2)))
        for path in (README, AWS)
        for where, match in lines_matching(path, STARTUP_MINUTES)
    ]
    assert len(quoted) >= 3, quoted  # the runbook, the first run, the range DAG at least
    assert [where for where, stated in quoted if stated != minutes] == [], f"start-up is ~{minutes} min"
    for where, match in lines_matching(AWS, r"CLUSTER_STARTUP_SECONDS` = ([\d,]+) s"):
        assert number(match.group(1)) == costs.CLUSTER_STARTUP_SECONDS, where
