"""The run's cluster shape (instance type, core nodes, Spot core nodes): the cheapest that meets the night.

The cost guard prices every shape the run may use for the night's image count and bytes (or a range's days):
general-purpose and compute-optimised families, x86 and Graviton (only where the engine's runtime has
wheels: ``pricing.engine_architectures``), On-Demand or Spot core nodes, and a single node. Each shape's
expected cost counts the start-up, every step at the measured per-image and per-MB rates (``contract.STEPS``
through ``aws.cost``) and the termination. The choice is the cheapest shape whose bound fits the budget and
whose outputs are expected within the run's deadline. A param left at ``auto`` is chosen, any other value
pins that part of the shape. Pure: no AWS call, no Airflow import.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fruits_platform.aws import cluster, cost, pricing
from fruits_platform.aws.sizing import SizingError
from fruits_spark.contract import step_record

if TYPE_CHECKING:
    from fruits_platform.aws.settings import RunSettings

AUTO = "auto"
# The nightly run starts at 02:00 UTC (run_date.SCHEDULE); the day's features are wanted by the start of the
# working day in Paris: 06:00 UTC is 08:00 there in summer, 07:00 in winter
NIGHT_DEADLINE_SECONDS = 4 * 3600
# a range of days (fruits_features_emr_backfill) is started by hand: done the same working day
RANGE_DEADLINE_SECONDS = 12 * 3600
# the core_nodes param's bound
MAX_CORE_NODES = 20


@dataclass(frozen=True)
class Shape:
    instance_type: str
    core_nodes: int
    use_spot: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        if not self.core_nodes:
            return f"1 x {self.instance_type} (single node)"
        market = "Spot" if self.use_spot else "On-Demand"
        return f"1 + {self.core_nodes} x {self.instance_type} ({market} core nodes)"

    def kind(self) -> tuple[str, str, str]:
        """(architecture, family class, market): the groups the summary shows the best shape of."""
        market = "single node" if not self.core_nodes else ("Spot" if self.use_spot else "On-Demand")
        family = "compute-optimised" if self.instance_type.startswith("c") else "general-purpose"
        return pricing.architecture(self.instance_type), family, market


@dataclass(frozen=True)
class Option:
    """A shape priced for the run: its estimate (bound and expectation) and whether it meets the deadline."""

    shape: Shape
    estimate: cost.CostEstimate
    meets_deadline: bool

    @property
    def expected_eur(self) -> float:
        # unrounded: the estimate rounds its euros to the cent, which would tie close shapes
        return self.estimate.expected_hourly_eur * self.estimate.expected_hours

    @property
    def within_budget(self) -> bool:
        return self.estimate.worst_case_eur <= self.estimate.budget_eur

    def line(self) -> str:
        late = "" if self.meets_deadline else ", after the deadline"
        return (
            f"{self.shape.label()}: {self.expected_eur:.2f} EUR, outputs in "
            f"{self.estimate.finish_hours:.2f} h{late}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.shape.as_dict(),
            "label": self.shape.label(),
            "expected_eur": round(self.expected_eur, 3),
            "finish_hours": self.estimate.finish_hours,
            "bound_eur": self.estimate.worst_case_eur,
            "meets_deadline": self.meets_deadline,
        }


@dataclass(frozen=True)
class Choice:
    chosen: Option
    reason: str
    pinned: dict[str, Any]
    deadline_seconds: int
    considered: int
    # the cheapest option of each kind (architecture, family class, market) other than the chosen one's
    alternatives: tuple[Option, ...]

    @property
    def shape(self) -> Shape:
        return self.chosen.shape

    @property
    def estimate(self) -> cost.CostEstimate:
        return self.chosen.estimate

    def summary(self) -> str:
        others = "; ".join(option.line() for option in self.alternatives) or "none"
        return f"cluster {self.chosen.line()}: {self.reason}. Best of each other kind: {others}"

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.chosen.as_dict(),
            "reason": self.reason,
            "pinned": self.pinned,
            "deadline_hours": self.deadline_seconds / 3600,
            "considered": self.considered,
            "alternatives": [option.as_dict() for option in self.alternatives],
        }


def pins(instance_type: str, core_nodes: int | str, use_spot: bool | str) -> dict[str, Any]:
    """The parts of the shape the run's params pin (any value but ``auto``)."""
    values = {"instance_type": instance_type, "core_nodes": core_nodes, "use_spot": use_spot}
    return {name: value for name, value in values.items() if value != AUTO}


def candidate_shapes(table: Mapping[str, Any], engine: str, pinned: Mapping[str, Any]) -> list[Shape]:
    """Every shape the run may use: the pinned parts fixed, the others over the priced types the engine's
    runtime runs on, 0..MAX_CORE_NODES core nodes, On-Demand or Spot core nodes (a single node has none)."""
    if "instance_type" in pinned:
        pricing.instance_prices(dict(table), pinned["instance_type"])
        pricing.check_engine_architecture(pinned["instance_type"], engine)
        types = [pinned["instance_type"]]
    else:
        allowed = pricing.engine_architectures(engine)
        types = [name for name in table["instances"] if pricing.architecture(name) in allowed]
    counts = [int(pinned["core_nodes"])] if "core_nodes" in pinned else range(MAX_CORE_NODES + 1)
    markets = [bool(pinned["use_spot"])] if "use_spot" in pinned else [False, True]
    return [
        Shape(name, count, spot)
        for name, count, spot in itertools.product(types, counts, markets)
        # Spot applies to core nodes: a single node is On-Demand, unless the run pinned both
        if not (spot and count == 0 and not {"use_spot", "core_nodes"} <= set(pinned))
    ]


def price(
    table: Mapping[str, Any],
    shape: Shape,
    *,
    engine: str,
    images: int | Sequence[int],
    image_bytes: int | Sequence[int],
    budget_eur: float,
    deadline_seconds: int,
) -> Option:
    """The shape's estimate for the run, with its executors sized for the engine (SizingError if none fit)."""
    sizing = cluster.executor_sizing(table, shape.instance_type, shape.core_nodes, engine)
    estimate = cost.estimate_worst_case(
        dict(table),
        instance_type=shape.instance_type,
        core_nodes=shape.core_nodes,
        use_spot=shape.use_spot,
        images=images,
        image_bytes=image_bytes,
        idle_timeout_seconds=cluster.IDLE_TIMEOUT_SECONDS,
        budget_eur=budget_eur,
        ebs_gib_per_instance=cluster.EBS_GIB_PER_INSTANCE,
        executor_cores=sizing.total_executor_cores,
    )
    return Option(shape, estimate, estimate.finish_hours * 3600 <= deadline_seconds)


def price_all(table: Mapping[str, Any], shapes: Sequence[Shape], **run: Any) -> list[Option]:
    """Every shape that can hold the engine's executors, priced."""
    options = []
    for shape in shapes:
        try:
            options.append(price(table, shape, **run))
        except SizingError:
            continue  # the engine's Python worker does not fit this type's memory
    return options


def choose(
    table: Mapping[str, Any],
    *,
    engine: str,
    images: int | Sequence[int],
    image_bytes: int | Sequence[int],
    budget_eur: float,
    instance_type: str = AUTO,
    core_nodes: int | str = AUTO,
    use_spot: bool | str = AUTO,
    deadline_seconds: int = NIGHT_DEADLINE_SECONDS,
) -> Choice:
    """The run's shape: of those whose bound fits ``budget_eur``, the cheapest expected to finish within
    ``deadline_seconds`` (ties: the sooner), else the one that finishes first. ``images``, ``image_bytes``:
    the night's, or each day's of a range (the choice covers their total). GuardRefused when a pinned type
    cannot run the engine, or no shape fits the budget (naming the cheapest bound)."""
    pinned = pins(instance_type, core_nodes, use_spot)
    run = {
        "engine": engine,
        "images": images,
        "image_bytes": image_bytes,
        "budget_eur": budget_eur,
        "deadline_seconds": deadline_seconds,
    }
    candidates = candidate_shapes(table, engine, pinned)
    options = price_all(table, candidates, **run)
    if not options:  # not one shape holds an executor of the engine: the first one says why
        price(table, candidates[0], **run)
    affordable = [option for option in options if option.within_budget]
    if not affordable:
        cost.check_budget(min(options, key=lambda option: option.estimate.worst_case_eur).estimate)
    on_time = [option for option in affordable if option.meets_deadline]
    hours = deadline_seconds / 3600
    if on_time:
        chosen = min(on_time, key=lambda o: (o.expected_eur, o.estimate.finish_hours, o.shape.label()))
        reason = (
            f"the cheapest of {len(on_time)} shapes expected to finish within the {hours:g} h deadline "
            f"with a bound within the {budget_eur:g} EUR budget"
        )
    else:
        chosen = min(affordable, key=lambda o: (o.estimate.finish_hours, o.expected_eur, o.shape.label()))
        reason = (
            f"no shape within the {budget_eur:g} EUR budget is expected to finish within the {hours:g} h "
            f"deadline: the one that finishes first of {len(affordable)}"
        )
    if pinned:
        reason += f" (pinned by the run: {', '.join(f'{k}={v}' for k, v in pinned.items())})"
    best: dict[tuple[str, str, str], Option] = {}
    for option in sorted(affordable, key=lambda o: (not o.meets_deadline, o.expected_eur)):
        best.setdefault(option.shape.kind(), option)
    alternatives = tuple(
        sorted(
            (option for kind, option in best.items() if kind != chosen.shape.kind()),
            key=lambda o: o.expected_eur,
        )
    )
    return Choice(chosen, reason, pinned, deadline_seconds, len(options), alternatives)


def breakdown(option: Option) -> dict[str, float]:
    """The option's expected euros by what they pay for: the start-up, each step's fixed overhead
    (spark-submit, YARN), each step's compute at the measured rates, the termination."""
    estimate, hourly = option.estimate, option.estimate.expected_hourly_eur / 3600
    # compute is linear in the count and the bytes: a range's total gives the sum of its days
    compute = cost.expected_step_seconds(
        estimate.images, estimate.image_bytes, estimate.executor_vcpus, estimate.vcpus_per_core
    )
    overheads = len(estimate.day_step_limits) * len(estimate.step_limits) * cost.STEP_OVERHEAD_SECONDS
    return {
        "startup": cost.CLUSTER_STARTUP_SECONDS * hourly,
        "step_overheads": overheads * hourly,
        **{f"compute_{name}": seconds * hourly for name, seconds in compute.items()},
        "termination": cost.TERMINATION_SECONDS * hourly,
    }


def choose_for_run(
    run: RunSettings,
    table: Mapping[str, Any],
    images,
    image_bytes,
    deadline_seconds: int = NIGHT_DEADLINE_SECONDS,
) -> Choice:
    """``choose`` for a run (an ``aws.settings.RunSettings``): its engine, budget and pinned params."""
    return choose(
        table,
        engine=run.pipeline["engine"],
        images=images,
        image_bytes=image_bytes,
        budget_eur=run.budget_eur,
        instance_type=run.instance_type,
        core_nodes=run.core_nodes,
        use_spot=run.use_spot,
        deadline_seconds=deadline_seconds,
    )


def resolved(run: RunSettings, shape: Shape | Mapping[str, Any]) -> RunSettings:
    """``run`` (an ``aws.settings.RunSettings``) with its shape chosen: what staging and the cluster get."""
    shape = shape if isinstance(shape, Shape) else Shape(**shape)
    return dataclasses.replace(
        run, instance_type=shape.instance_type, core_nodes=shape.core_nodes, use_spot=shape.use_spot
    )


def ingest_needed(
    table: Mapping[str, Any],
    target_eur: float,
    *,
    engine: str,
    images: int,
    image_bytes: int,
    deadline_seconds: int = NIGHT_DEADLINE_SECONDS,
) -> tuple[float, Shape] | None:
    """How fast ingest would have to be for the night to cost ``target_eur``: the most ingest core-seconds
    per image at which some shape's expected cost is the target, and that shape; None if even a free ingest
    costs more (the start-up, the other steps and the termination already do).

    For a given shape the expected cost is linear in ingest's core-seconds (its compute divides over the
    shape's cores; its start-up, step overheads and termination do not move), so each shape's figure is
    solved from its estimate at the measured rates."""
    ingest = step_record("ingest")
    measured = ingest.core_seconds_per_image + image_bytes / images / 1e6 * ingest.core_seconds_per_mb
    shapes = candidate_shapes(table, engine, {})
    best: tuple[float, Shape] | None = None
    for option in price_all(
        table,
        shapes,
        engine=engine,
        images=images,
        image_bytes=image_bytes,
        budget_eur=float("inf"),
        deadline_seconds=deadline_seconds,
    ):
        if not option.meets_deadline:
            continue  # a faster ingest only shortens a night that meets the deadline already
        estimate = option.estimate
        # billed seconds of ingest's compute at the measured rate, on this shape
        ingest_seconds = cost.expected_step_seconds(
            images, image_bytes, estimate.executor_vcpus, estimate.vcpus_per_core
        )[ingest.name]
        other_hours = estimate.expected_hours - ingest_seconds / 3600
        spare_hours = target_eur / estimate.expected_hourly_eur - other_hours
        if spare_hours < 0:
            continue
        allowed = measured * min(spare_hours * 3600 / ingest_seconds, 1e9)
        if best is None or allowed > best[0]:
            best = (allowed, option.shape)
    return best


def fixed_seconds_for(option: Option, target_eur: float, ingest_core_seconds: float) -> float:
    """The start-up, step overheads and termination (billed seconds) that ``option``'s night could afford
    to cost ``target_eur`` with ingest at ``ingest_core_seconds`` per image (the other steps at their
    measured rates): what the fixed part would have to shrink to, next to a faster ingest."""
    estimate = option.estimate
    ingest = step_record("ingest")
    measured = (
        ingest.core_seconds_per_image
        + estimate.image_bytes / estimate.images / 1e6 * ingest.core_seconds_per_mb
    )
    compute = cost.expected_step_seconds(
        estimate.images, estimate.image_bytes, estimate.executor_vcpus, estimate.vcpus_per_core
    )
    compute[ingest.name] *= ingest_core_seconds / measured
    return target_eur / estimate.expected_hourly_eur * 3600 - sum(compute.values())
