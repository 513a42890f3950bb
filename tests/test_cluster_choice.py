"""The cluster choice (aws.shapes): the cheapest shape that meets the night, a pinned shape kept, Graviton
refused for the TensorFlow engine, a range chosen for its total; and the chosen shape reaching the cluster
request, its executors and the run summary.

Every test checks a property of the choice against the priced alternatives (recomputed here shape by shape
with the cost guard's functions), never a figure copied from the code."""

from __future__ import annotations

import datetime as dt

import pytest

from fruits_platform.aws import cluster, cost, cost_report, pricing, shapes, sizing
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.settings import RunSettings
from fruits_platform.aws.staging import StagedArtifacts

# README's sizes: Fruits-360 thumbnails ~5 KB, 12 MP phone photos ~2.5 MB
THUMBNAIL_BYTES = 5_000
PHONE_PHOTO_BYTES = 2_500_000
BUDGET_EUR = 10.0


@pytest.fixture(scope="module")
def table() -> dict:
    return pricing.load_price_table()


def every_option(
    table, engine, images, image_bytes, deadline=shapes.NIGHT_DEADLINE_SECONDS, budget=BUDGET_EUR
):
    """Every shape the run could use with nothing pinned, priced one by one."""
    return shapes.price_all(
        table,
        shapes.candidate_shapes(table, engine, {}),
        engine=engine,
        images=images,
        image_bytes=image_bytes,
        budget_eur=budget,
        deadline_seconds=deadline,
    )


def assert_cheapest_on_time(choice, options) -> None:
    """The chosen option meets the deadline and the budget, and no option that does is cheaper."""
    eligible = [o for o in options if o.meets_deadline and o.within_budget]
    assert eligible, "no shape meets the deadline: the test's night is wrong"
    assert choice.chosen.meets_deadline
    assert choice.chosen.within_budget
    cheapest = min(o.expected_eur for o in eligible)
    assert choice.chosen.expected_eur == pytest.approx(cheapest, abs=1e-9), [o.line() for o in eligible[:3]]
    assert choice.considered == len(options)


def test_a_small_night_runs_on_a_single_node(table):
    """A few dozen thumbnails: start-up and termination are the whole bill, and every core node would pay
    them too. The choice is one node, the cheapest that does."""
    images = 36
    choice = shapes.choose(
        table, engine="onnx", images=images, image_bytes=images * THUMBNAIL_BYTES, budget_eur=BUDGET_EUR
    )
    options = every_option(table, "onnx", images, images * THUMBNAIL_BYTES)
    assert_cheapest_on_time(choice, options)
    assert choice.shape.core_nodes == 0
    single = [o for o in options if o.shape.core_nodes == 0]
    assert choice.chosen.expected_eur <= min(o.expected_eur for o in options if o.shape.core_nodes) - 0.01
    assert choice.chosen.expected_eur == pytest.approx(min(o.expected_eur for o in single))
    # what the summary says: the chosen shape, why, and the best of the other kinds with their cost
    assert choice.shape.label() in choice.summary()
    assert "cheapest" in choice.reason
    assert {o.shape.kind() for o in choice.alternatives} == {o.shape.kind() for o in options} - {
        choice.shape.kind()
    }


def test_a_night_of_100000_phone_photos_is_costed_with_its_start_up(table):
    images = 100_000
    image_bytes = images * PHONE_PHOTO_BYTES
    choice = shapes.choose(
        table, engine="onnx", images=images, image_bytes=image_bytes, budget_eur=BUDGET_EUR
    )
    assert_cheapest_on_time(choice, every_option(table, "onnx", images, image_bytes))
    estimate = choice.estimate
    # the expected bill counts the start-up and the termination besides the steps' compute
    compute = cost.expected_compute_seconds(
        images, image_bytes, estimate.executor_vcpus, estimate.vcpus_per_core
    )
    assert estimate.expected_hours * 3600 >= (
        cost.CLUSTER_STARTUP_SECONDS + compute + cost.TERMINATION_SECONDS - 1
    )
    parts = shapes.breakdown(choice.chosen)
    assert parts["startup"] > 0
    assert sum(parts.values()) == pytest.approx(choice.chosen.expected_eur, rel=1e-3)
    # its outputs are expected within the night, and the bound the budget checks covers the expectation
    assert estimate.finish_hours * 3600 <= shapes.NIGHT_DEADLINE_SECONDS
    assert estimate.expected_eur <= estimate.worst_case_eur <= BUDGET_EUR


def test_a_30_day_range_is_chosen_for_its_total(table):
    """fruits_features_emr_backfill runs every day of the range on one cluster: the shape must finish the
    whole range within its deadline. The shape one of those days would get alone does not."""
    days = [100_000] * 30
    day_bytes = [count * PHONE_PHOTO_BYTES for count in days]
    deadline = shapes.RANGE_DEADLINE_SECONDS
    choice = shapes.choose(
        table, engine="onnx", images=days, image_bytes=day_bytes, budget_eur=1000, deadline_seconds=deadline
    )
    options = every_option(table, "onnx", days, day_bytes, deadline, budget=1000)
    assert_cheapest_on_time(choice, options)
    assert (choice.estimate.images, choice.estimate.image_bytes) == (sum(days), sum(day_bytes))
    assert len(choice.estimate.day_step_limits) == len(days)
    one_night = shapes.choose(
        table, engine="onnx", images=days[0], image_bytes=day_bytes[0], budget_eur=1000
    ).shape
    alone = shapes.price(
        table,
        one_night,
        engine="onnx",
        images=days,
        image_bytes=day_bytes,
        budget_eur=1000,
        deadline_seconds=deadline,
    )
    assert not alone.meets_deadline
    assert choice.estimate.finish_hours < alone.estimate.finish_hours


def test_graviton_stays_refused_for_the_tensorflow_engine(table):
    """tensorflow-cpu has no aarch64 wheel: no Graviton type is chosen or offered for it, and a pinned one
    is refused before any cluster; the ONNX runtime's pins all have one."""
    assert "arm64" in pricing.engine_architectures("onnx")
    assert pricing.engine_architectures("tensorflow") == ("x86_64",)
    images = 100_000
    choice = shapes.choose(
        table,
        engine="tensorflow",
        images=images,
        image_bytes=images * PHONE_PHOTO_BYTES,
        budget_eur=BUDGET_EUR,
    )
    assert pricing.architecture(choice.shape.instance_type) == "x86_64"
    assert all(pricing.architecture(o.shape.instance_type) == "x86_64" for o in choice.alternatives)
    graviton = [name for name in table["instances"] if pricing.architecture(name) == "arm64"]
    assert graviton
    for name in graviton:
        with pytest.raises(GuardRefused, match=f"instance_type {name} is arm64.*engine tensorflow"):
            shapes.choose(
                table,
                engine="tensorflow",
                images=10,
                image_bytes=10,
                budget_eur=BUDGET_EUR,
                instance_type=name,
            )
    # the same type pinned for onnx is fine
    assert (
        shapes.choose(
            table, engine="onnx", images=10, image_bytes=10, budget_eur=BUDGET_EUR, instance_type=graviton[0]
        ).shape.instance_type
        == graviton[0]
    )


@pytest.mark.parametrize(
    "pinned",
    [
        {"instance_type": "c5.2xlarge"},
        {"core_nodes": 3},
        {"use_spot": True},
        {"use_spot": False, "core_nodes": 2},
        {"instance_type": "m5.xlarge", "core_nodes": 2, "use_spot": False},
    ],
)
def test_a_pinned_part_of_the_shape_is_kept_and_the_rest_chosen(table, pinned):
    images = 20_000
    choice = shapes.choose(
        table,
        engine="onnx",
        images=images,
        image_bytes=images * PHONE_PHOTO_BYTES,
        budget_eur=BUDGET_EUR,
        **pinned,
    )
    for name, value in pinned.items():
        assert getattr(choice.shape, name) == value, name
    if pinned.get("use_spot"):
        assert choice.shape.core_nodes >= 1  # Spot is for core nodes
    if len(pinned) == 3:
        assert choice.considered == 1
    assert choice.pinned == pinned
    assert "pinned" in choice.reason
    # the rest is still the cheapest of what the pins leave
    left = shapes.price_all(
        table,
        shapes.candidate_shapes(table, "onnx", pinned),
        engine="onnx",
        images=images,
        image_bytes=images * PHONE_PHOTO_BYTES,
        budget_eur=BUDGET_EUR,
        deadline_seconds=shapes.NIGHT_DEADLINE_SECONDS,
    )
    assert_cheapest_on_time(choice, left)


def test_a_tighter_deadline_buys_a_faster_cluster_and_a_missed_one_the_fastest(table):
    images = 100_000
    run = {"engine": "onnx", "images": images, "image_bytes": images * PHONE_PHOTO_BYTES, "budget_eur": 50.0}
    loose = shapes.choose(table, **run)
    tight_seconds = int(loose.estimate.finish_hours * 3600 * 0.6)
    tight = shapes.choose(table, **run, deadline_seconds=tight_seconds)
    assert tight.estimate.finish_hours * 3600 <= tight_seconds < loose.estimate.finish_hours * 3600
    assert tight.chosen.expected_eur >= loose.chosen.expected_eur
    # nothing finishes in 10 minutes (the start-up alone is longer): the choice is the fastest affordable
    missed = shapes.choose(table, **run, deadline_seconds=600)
    options = every_option(table, "onnx", images, images * PHONE_PHOTO_BYTES, 600, budget=50.0)
    assert not missed.chosen.meets_deadline
    assert "finishes first" in missed.reason
    fastest = min(o.estimate.finish_hours for o in options if o.within_budget)
    assert missed.estimate.finish_hours == fastest


def test_no_shape_within_the_budget_is_refused_with_the_cheapest_bound(table):
    with pytest.raises(GuardRefused, match=r"exceeds budget_eur 0\.01"):
        shapes.choose(table, engine="onnx", images=100, image_bytes=100 * THUMBNAIL_BYTES, budget_eur=0.01)


def test_a_single_node_leaves_its_driver_room_and_compute_nodes_have_half_the_memory():
    # the same family class and size: a core node's executors may take what a single node's may not
    core = sizing.size_executors("m5.xlarge", 4, 2, "tensorflow")
    single = sizing.size_executors("m5.xlarge", 4, 0, "tensorflow")
    assert single.container_mb <= sizing.yarn_memory_mb("m5.xlarge") - sizing.SINGLE_NODE_DRIVER_MB
    assert single.executor_cores < core.executor_cores
    assert sizing.yarn_memory_mb("c5.xlarge") < sizing.yarn_memory_mb("m5.xlarge")
    with pytest.raises(sizing.SizingError, match="single-node"):
        sizing.size_executors("c6g.xlarge", 4, 0, "onnx")


def run_settings(**shape) -> RunSettings:
    return RunSettings(
        bucket="b",
        region="eu-west-3",
        dt="2026-11-05",
        input_prefix="uploads/dt=2026-11-05/",
        output_prefix="outputs/",
        pipeline={"engine": "onnx", "input": "s3://b/uploads/", "output": "s3://b/outputs/"},
        instance_type=shape.get("instance_type", shapes.AUTO),
        core_nodes=shape.get("core_nodes", shapes.AUTO),
        use_spot=shape.get("use_spot", shapes.AUTO),
        budget_eur=BUDGET_EUR,
        price_table=None,
        job_flow_role="node",
        service_role="service",
        subnet_id="subnet-1",
        security_configuration=None,
    )


@pytest.mark.parametrize(("images", "pinned"), [(36, {}), (100_000, {}), (20_000, {"use_spot": True})])
def test_the_chosen_shape_is_the_cluster_requested_and_reported(table, images, pinned):
    """check_budget's choice goes to the cluster request (types, counts, market, executors) and, through
    the estimate report_cost gets, into the run summary with its reason and alternatives."""
    run = run_settings(**pinned)
    choice = shapes.choose_for_run(run, table, images, images * PHONE_PHOTO_BYTES)
    chosen = shapes.resolved(run, choice.shape.as_dict())
    assert (chosen.instance_type, chosen.core_nodes, chosen.use_spot) == (
        choice.shape.instance_type,
        choice.shape.core_nodes,
        choice.shape.use_spot,
    )
    staged = StagedArtifacts(artifacts_uri="s3://b/artifacts/h/", weights_uri="s3://b/w.h5")
    request = cluster.cluster_definition(chosen, staged, table, "dag", "run")
    instances = request["Instances"]
    if choice.shape.use_spot and choice.shape.core_nodes:
        _primary, core = instances["InstanceFleets"]
        assert core["TargetSpotCapacity"] == choice.shape.core_nodes
        assert core["InstanceTypeConfigs"][0]["InstanceType"] == choice.shape.instance_type
    else:
        groups = instances["InstanceGroups"]
        assert {group["InstanceType"] for group in groups} == {choice.shape.instance_type}
        assert sum(group["InstanceCount"] for group in groups) == 1 + choice.shape.core_nodes
    (defaults,) = [c for c in request["Configurations"] if c["Classification"] == "spark-defaults"]
    executors = cluster.executor_sizing(table, choice.shape.instance_type, choice.shape.core_nodes, "onnx")
    assert defaults["Properties"] == {**defaults["Properties"], **executors.spark_defaults()}
    assert executors.total_executor_cores == choice.estimate.executor_vcpus

    estimate = {**choice.estimate.as_dict(), "cluster_choice": choice.as_dict()}
    created = dt.datetime(2026, 11, 5, 2, tzinfo=dt.UTC)
    ended = {"Status": {"State": "TERMINATED", "Timeline": {"CreationDateTime": created}}}
    summary = cost_report.summarize_run(run, estimate, "j-1", ended, {}, [])
    assert summary["cost"]["cluster"] == choice.shape.label()
    assert summary["cost"]["cluster_chosen_because"] == choice.reason
    for option in choice.alternatives:
        assert option.shape.label() in summary["cost"]["cluster_alternatives"]
    assert summary["cluster_choice"]["alternatives"][0]["expected_eur"] >= 0


def test_every_price_names_its_source_and_spot_fleets_keep_the_shape(table):
    """Each row says where its figures come from (the derived ones say so), and a Spot fleet's alternative
    types have the chosen type's memory, cores and architecture: the executors and the pace the choice
    priced."""
    for name, row in table["instances"].items():
        assert row["source"], name
        assert ("derived" in row["source"]) == (name.split(".")[0] not in ("m5", "m6i")), name
        assert row["ec2_spot_usd"] < row["ec2_on_demand_usd"], name
        for other in pricing.spot_alternatives(table, name):
            same = ("memory_gib", "vcpus")
            assert [table["instances"][other][key] for key in same] == [row[key] for key in same]
            assert pricing.architecture(other) == pricing.architecture(name)
            assert pricing.vcpus_per_core(table, other) == pricing.vcpus_per_core(table, name)


def test_a_cluster_is_never_requested_with_a_shape_still_auto(table):
    staged = StagedArtifacts(artifacts_uri="s3://b/artifacts/h/", weights_uri="s3://b/w.h5")
    with pytest.raises(ValueError, match="core_nodes, use_spot still auto"):
        cluster.cluster_definition(run_settings(instance_type="m5.xlarge"), staged, table, "dag", "run")
