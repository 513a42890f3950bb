"""Pure unit tests of the guards: cost bound and step limits (aws.cost), EU allow-list, bucket region and
subnet (aws.gdpr), run date -> uploads prefix and required Variables (aws.settings)."""

from __future__ import annotations

import datetime as dt

import pytest

from fruits_platform.aws import cost, gdpr, pricing, settings
from fruits_platform.aws.refusal import GuardRefused
from fruits_spark.contract import STEP_NAMES

UTC = dt.UTC


# -- cost -------------------------------------------------------------------------------------------------
# a table of round figures: the expected prices below are worked out by hand, not by the module's formula
TABLE = {
    "usd_to_eur": 0.5,
    "as_of": "test table",
    "ebs_gp3_usd_per_gb_month": 0.08,
    "instances": {"m5.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.2, "ec2_spot_usd": 0.1, "emr_usd": 0.05}},
}


def test_hourly_price_counts_every_node_and_spot_only_on_core_nodes():
    # 3 nodes x (0.20 + 0.05) USD = 0.75 USD/h = 0.375 EUR/h
    assert cost.cluster_hourly_eur(TABLE, "m5.xlarge", core_nodes=2, use_spot=False) == pytest.approx(0.375)
    # the primary stays On-Demand: (0.25 + 2 x 0.15) USD = 0.55 USD/h
    assert cost.cluster_hourly_eur(TABLE, "m5.xlarge", core_nodes=2, use_spot=True) == pytest.approx(0.275)


# Fruits-360 thumbnails weigh ~5 KB; the app's phone photos 2-5 MB
THUMBNAIL_BYTES = 5_000
PHONE_PHOTO_BYTES = 2_500_000


def bound(images=96_000, use_spot=False, core_nodes=2, budget_eur=10.0, image_bytes=None, **kwargs):
    return cost.estimate_worst_case(
        pricing.load_price_table(),
        instance_type="m5.xlarge",
        core_nodes=core_nodes,
        use_spot=use_spot,
        images=images,
        image_bytes=images * THUMBNAIL_BYTES if image_bytes is None else image_bytes,
        idle_timeout_seconds=900,
        budget_eur=budget_eur,
        ebs_gib_per_instance=94,
        **kwargs,
    )


def test_bound_covers_the_longest_run_the_limits_allow():
    """The sensors' timeouts (each step's limit, the first one plus start-up), the idle timeout (900 s, given
    above) and then the termination are what the run enforces: the bound covers all of them back to back."""
    estimate = bound()
    timeouts = cost.sensor_timeouts(estimate.step_limits)
    assert list(timeouts) == list(STEP_NAMES)
    assert estimate.hours * 3600 >= sum(timeouts.values()) + 900 + cost.TERMINATION_SECONDS - 1
    # each limit leaves room for its step's expected compute: a normal run is never killed by it
    expected = cost.expected_step_seconds(96_000, 96_000 * THUMBNAIL_BYTES, estimate.executor_vcpus)
    for name, seconds in expected.items():
        assert estimate.step_limits[name] >= cost.STEP_OVERHEAD_SECONDS + 2 * seconds, name
    assert estimate.expected_hours < estimate.hours
    assert estimate.expected_eur < estimate.worst_case_eur


def test_bound_of_a_tiny_batch_worked_out_by_hand():
    """100 images on 3 x m5.xlarge of TABLE, no EBS, no public IPs. Every one of the n steps gets the 900 s
    floor (its compute is seconds) and its sensor 120 s of slack; start-up is allowed 1800 s (1200
    provisioning + the bootstrap's 600 s timeout), idle 900 s and then 600 s to terminate:
    1800 + n x (900 + 120) + 900 + 600 s (3 steps: 6360 s = 1.7667 h). Each node at its cap
    (0.20 + 0.05 USD/h), 0.5 EUR per USD: 3 x 0.25 x 0.5 = 0.375 EUR/h."""
    estimate = cost.estimate_worst_case(
        TABLE,
        instance_type="m5.xlarge",
        core_nodes=2,
        use_spot=False,
        images=100,
        image_bytes=100 * THUMBNAIL_BYTES,
        idle_timeout_seconds=900,
        budget_eur=1,
        ebs_gib_per_instance=0,
        public_ipv4=False,
    )
    hours = (1800 + len(STEP_NAMES) * (900 + 120) + 900 + 600) / 3600
    assert estimate.hours == pytest.approx(hours, abs=1e-4)
    assert estimate.hourly_eur == pytest.approx(0.375)
    assert estimate.worst_case_eur == pytest.approx(round(hours * 0.375, 2))


def test_a_range_is_bounded_with_one_start_up_and_every_days_limits():
    """Seven days on one cluster: one start-up, one idle timeout and termination, and each day's three steps
    limited by that day's own image count (a big day gets longer limits than a small one)."""
    days = [100, 100, 100, 100, 100, 100, 400_000]
    day_bytes = [count * PHONE_PHOTO_BYTES for count in days]
    estimate = bound(images=days, image_bytes=day_bytes)
    vcpus = estimate.executor_vcpus
    assert estimate.day_step_limits == [
        cost.step_limits(count, size, vcpus) for count, size in zip(days, day_bytes, strict=True)
    ]
    assert estimate.day_step_limits[-1]["features"] > estimate.day_step_limits[0]["features"]
    steps = sum(
        limit + cost.SENSOR_SLACK_SECONDS for day in estimate.day_step_limits for limit in day.values()
    )
    idle_and_end = 900 + cost.TERMINATION_SECONDS
    assert estimate.hours * 3600 == pytest.approx(cost.STARTUP_LIMIT_SECONDS + steps + idle_and_end, abs=1)
    assert (estimate.images, estimate.image_bytes) == (sum(days), sum(day_bytes))
    # one cluster for the seven days costs less than seven daily runs, each with its start-up and idle end
    daily = sum(
        bound(images=count, image_bytes=size).worst_case_eur
        for count, size in zip(days, day_bytes, strict=True)
    )
    assert estimate.worst_case_eur < daily


# docs/BENCHMARKS.md, round 2 (onnx engine): seconds of each step for 20,000 images on 2 physical cores
MEASURED_SECONDS_20K_2_CORES = {"ingest": 113.7, "features": 91.1, "pca": 16.8}


@pytest.mark.parametrize(("images", "vcpus"), [(20_000, 8), (96_000, 8), (1_000_000, 8), (1_000_000, 40)])
def test_each_step_limit_leaves_twice_its_measured_time(images, vcpus):
    """A limit that kills a normal run is worse than none. An EMR vCPU is half a physical core (a
    hyperthread): the measured seconds scale by images / 20,000 and by 4 / vcpus (2 cores = 4 vCPUs).
    Each step gets at least twice that, plus 60 s for spark-submit and YARN to start."""
    limits = cost.step_limits(images, images * THUMBNAIL_BYTES, vcpus)
    assert set(MEASURED_SECONDS_20K_2_CORES) <= set(limits)
    for name, seconds in MEASURED_SECONDS_20K_2_CORES.items():
        expected = seconds * images / 20_000 * 4 / vcpus
        assert limits[name] >= 2 * expected + 60, (name, limits[name], expected)


def test_spot_is_bounded_at_its_cap_and_ebs_is_counted():
    table = pricing.load_price_table()
    m5 = table["instances"]["m5.xlarge"]
    on_demand, spot = bound(), bound(use_spot=True)

    # Spot core nodes may cost up to their max price (On-Demand): the bound cannot assume the typical price
    assert spot.worst_case_eur == on_demand.worst_case_eur
    assert spot.expected_eur < on_demand.expected_eur
    cap = 3 * (m5["ec2_on_demand_usd"] + m5["emr_usd"]) * table["usd_to_eur"]
    assert spot.instance_hourly_eur == pytest.approx(cap, abs=1e-3)
    ebs = 3 * 94 * table["ebs_gp3_usd_per_gb_month"] / 730 * table["usd_to_eur"]
    assert on_demand.ebs_hourly_eur == pytest.approx(ebs, abs=1e-3)
    assert on_demand.hourly_eur > on_demand.instance_hourly_eur + on_demand.ebs_hourly_eur - 1e-3
    # the private subnet the placement guard requires gives no public IPv4 (billed per hour where asked)
    assert bound(public_ipv4=True).hourly_eur > on_demand.hourly_eur


def test_a_night_of_phone_photos_is_neither_killed_by_its_limits_nor_under_budgeted():
    """100,000 phone photos of 2.5 MB on the default cluster, against the ingest rate `fruits bench`
    measured on 2,000 such photos (docs/BENCHMARKS.md, round 3 on an idle machine: 85.24 s in its job on
    2 cores for 2,000 photos of 2,741,466 bytes on average). The old guard counted images only: it
    expected a fraction of this and gave the step a limit that killed the run after paying for it."""
    photos, size = 100_000, PHONE_PHOTO_BYTES
    estimate = bound(images=photos, image_bytes=photos * size)
    # the measured rate per core, scaled to the cluster (an m5 vCPU is half a core)
    core_seconds_per_photo = 85.24 * 2 / (2_000 * 2_741_466) * size
    ingest_runtime = photos * core_seconds_per_photo * cost.VCPUS_PER_CORE / estimate.executor_vcpus
    assert estimate.step_limits["ingest"] >= 2 * ingest_runtime
    # the bound the budget is checked against pays for start-up and that ingest, and the other steps
    assert estimate.hours * 3600 >= cost.STARTUP_LIMIT_SECONDS + ingest_runtime + sum(
        limit for step, limit in estimate.step_limits.items() if step != "ingest"
    )
    assert estimate.worst_case_eur >= estimate.hours * estimate.hourly_eur - 0.01
    # the bytes are what makes the difference: counted as thumbnails, the photos are expected to take
    # less than they do; with their bytes, at least what they took
    vcpus = estimate.executor_vcpus
    assert cost.expected_step_seconds(photos, photos * 5_000, vcpus)["ingest"] < ingest_runtime
    assert cost.expected_step_seconds(photos, photos * size, vcpus)["ingest"] >= ingest_runtime


def test_fewer_executor_cores_mean_longer_limits():
    """Memory sizing may leave vCPUs without a Python worker: the limits follow the cores really used."""
    assert (
        bound(images=500_000, executor_cores=6).step_limits["features"]
        > bound(images=500_000).step_limits["features"]
    )


def test_single_node_cluster_computes_on_the_primary():
    table = pricing.load_price_table()
    assert cost.executor_vcpus(table, "m5.2xlarge", core_nodes=0) == 8
    assert cost.cluster_hourly_eur(table, "m5.2xlarge", 0, use_spot=True) == pytest.approx(
        (0.448 + 0.096) * table["usd_to_eur"]
    )


def test_budget_refusal_gives_the_figures():
    estimate = bound(images=100, budget_eur=0.1)
    with pytest.raises(GuardRefused) as refused:
        cost.check_budget(estimate)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{estimate.worst_case_eur:.2f} EUR exceeds budget_eur 0.1" in message
    assert "3 x m5.xlarge" in message
    assert "idle timeout and termination 0.42" in message  # 900 s + 600 s
    cost.check_budget(bound(images=100, budget_eur=10))


def test_price_table_variable_overrides_defaults():
    table = pricing.load_price_table('{"usd_to_eur": 1.0, "instances": {"m5.xlarge": {"emr_usd": 1.0}}}')
    assert table["usd_to_eur"] == 1.0
    assert table["instances"]["m5.xlarge"]["emr_usd"] == 1.0
    assert (
        table["instances"]["m5.xlarge"]["ec2_on_demand_usd"]
        == pricing.PRICE_TABLE["instances"]["m5.xlarge"]["ec2_on_demand_usd"]
    )
    assert pricing.PRICE_TABLE["usd_to_eur"] == pricing.USD_TO_EUR  # the default is not mutated
    with pytest.raises(pricing.PriceTableError, match="not valid JSON"):
        pricing.load_price_table("{nope")
    with pytest.raises(pricing.PriceTableError, match="lacks"):
        pricing.load_price_table({"instances": {"c7i.large": {"vcpus": 2}}})
    with pytest.raises(pricing.PriceTableError, match="no price for instance type"):
        pricing.instance_prices(table, "x1.32xlarge")


def test_every_offered_instance_type_has_a_price():
    table = pricing.load_price_table()
    for instance_type in pricing.INSTANCE_TYPES:
        prices = pricing.instance_prices(table, instance_type)
        assert prices["ec2_spot_usd"] < prices["ec2_on_demand_usd"]
        assert prices["vcpus"] >= 4


def test_step_limits_grow_with_the_batch_and_shrink_with_the_cluster():
    tiny = cost.step_limits(10, 10 * THUMBNAIL_BYTES, 8)
    # a handful of images still needs spark-submit, YARN and the model load: never less than 10 minutes
    assert min(tiny.values()) >= 600
    sizes = [10, 10_000, 100_000, 1_000_000, 10_000_000]
    for name in tiny:
        by_size = [cost.step_limits(n, n * THUMBNAIL_BYTES, 8)[name] for n in sizes]
        assert by_size == sorted(by_size), name
        assert by_size[-1] > by_size[0], name
        assert (
            cost.step_limits(1_000_000, 5 * 10**9, 16)[name]
            <= cost.step_limits(1_000_000, 5 * 10**9, 8)[name]
        ), name


def test_sensors_outlast_their_steps_and_only_the_first_waits_for_start_up():
    limits = cost.step_limits(1_000_000, 1_000_000 * THUMBNAIL_BYTES, 8)
    timeouts = cost.sensor_timeouts(limits)
    # every sensor outlasts its step's limit (the cluster's `timeout` says why first), by less than a
    # cluster start-up; the first one also waits for EMR's provisioning and bootstrap (>= 15 min)
    slack = {name: timeouts[name] - limit for name, limit in limits.items()}
    assert all(0 < slack[name] < 900 for name in ("features", "pca"))
    assert slack["ingest"] >= slack["features"] + 15 * 60


def test_actual_cost_from_timeline():
    created = dt.datetime(2026, 11, 5, 2, 0, tzinfo=UTC)
    hours, euros = cost.actual_cost_eur(2.0, created, created + dt.timedelta(minutes=45))
    assert (hours, euros) == (0.75, 1.5)
    assert cost.actual_cost_eur(2.0, created, created - dt.timedelta(seconds=1)) == (0.0, 0.0)


# -- GDPR -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "region", ["us-east-1", "eu-west-9", "me-central-1", "il-central-1", "", "eu-west-2", "eu-central-2"]
)
def test_other_regions_are_refused(region):
    with pytest.raises(GuardRefused, match="not in the EU allow-list"):
        gdpr.check_region(region)


@pytest.mark.parametrize("region", ["eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1"])
def test_regions_of_eu_member_states_pass(region):
    assert gdpr.check_region(region) == region


def test_allow_list_matches_what_infra_can_deploy_to():
    from cfnlint.decode import decode

    template, _ = decode("infra/fruits-infra.yaml")
    allowed = str(template.get("Rules", {}))
    assert all(region in allowed for region in gdpr.EU_REGIONS)
    assert "eu-west-2" not in allowed


@pytest.mark.parametrize(
    ("constraint", "region"),
    [(None, "us-east-1"), ("", "us-east-1"), ("EU", "eu-west-1"), ("eu-west-3", "eu-west-3")],
)
def test_bucket_region_from_location_constraint(constraint, region):
    assert gdpr.bucket_region(constraint) == region


def test_bucket_must_be_in_the_run_region():
    gdpr.check_bucket_region("b", "eu-west-3", "eu-west-3")
    with pytest.raises(GuardRefused, match="bucket b is in eu-central-1, not in the run's region eu-west-3"):
        gdpr.check_bucket_region("b", "eu-central-1", "eu-west-3")
    with pytest.raises(GuardRefused, match="bucket b is in us-east-1"):
        gdpr.check_bucket_region("b", None, "eu-west-3")


def test_bucket_is_required_and_valid():
    with pytest.raises(GuardRefused, match="param bucket is required"):
        gdpr.require_bucket("")
    with pytest.raises(GuardRefused, match="not a valid S3 bucket name"):
        gdpr.require_bucket("Bad_Bucket")
    assert gdpr.require_bucket(" fruits-data ") == "fruits-data"


def test_default_encryption_is_required():
    assert gdpr.check_default_encryption(
        "b", [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
    ) == ("aws:kms")
    with pytest.raises(GuardRefused, match="no default server-side encryption"):
        gdpr.check_default_encryption("b", [])


# -- run date -> uploads prefix ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("", "uploads/dt=2026-11-05/"),
        (None, "uploads/dt=2026-11-05/"),
        ("  ", "uploads/dt=2026-11-05/"),
        ("initial", "initial/"),
        ("/initial/2026/", "initial/2026/"),
    ],
)
def test_input_prefix_param_or_the_days_uploads(param, expected):
    assert settings.input_prefix(param, "2026-11-05") == expected


# -- what must exist before a cluster is paid for ---------------------------------------------------------
TAG = [{"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}]
VPC = {"VpcId": "vpc-1", "Tags": TAG}


def route_table(*routes, subnet_id=None, main=False):
    association = {"Main": main, **({"SubnetId": subnet_id} if subnet_id else {})}
    return {"RouteTableId": "rtb-1", "Associations": [association], "Routes": list(routes)}


DEFAULT_TO_IGW = {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"}
DEFAULT_TO_NAT = {"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-1", "State": "active"}
LOCAL = {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"}


def subnet(tagged=True, public_ip=False):
    return {
        "SubnetId": "subnet-1",
        "VpcId": "vpc-1",
        "MapPublicIpOnLaunch": public_ip,
        **({"Tags": TAG} if tagged else {}),
    }


def test_missing_variables_are_all_named():
    with pytest.raises(GuardRefused) as refused:
        settings.require_variables({"fruits_emr_service_role": "r", "fruits_emr_subnet_id": "", "b": None})
    assert "Airflow Variable(s) b, fruits_emr_subnet_id not set" in str(refused.value)
    assert settings.require_variables({"a": "x"}) == {"a": "x"}


@pytest.mark.parametrize(
    ("tagged_subnet", "tagged_vpc", "refused"),
    [
        (False, True, "subnet subnet-1 (Variable"),
        (True, False, "VPC vpc-1 (Variable"),
        (False, False, "and VPC"),
    ],
)
def test_untagged_subnet_or_vpc_is_refused(tagged_subnet, tagged_vpc, refused):
    vpc = VPC if tagged_vpc else {"VpcId": "vpc-1"}
    tables = [route_table(LOCAL, DEFAULT_TO_NAT, main=True)]
    with pytest.raises(
        GuardRefused, match="lack the tag for-use-with-amazon-emr-managed-policies=true"
    ) as error:
        gdpr.check_subnet(subnet(tagged=tagged_subnet), vpc, tables, "eu-west-3", "fruits_emr_subnet_id")
    assert refused in str(error.value)


S3_ENDPOINT = {"DestinationPrefixListId": "pl-1", "GatewayId": "vpce-1", "State": "active"}
IPV6_OUT = {"DestinationIpv6CidrBlock": "::/0", "EgressOnlyInternetGatewayId": "eigw-1", "State": "active"}


def test_subnet_must_not_reach_the_internet_and_must_reach_s3():
    check = gdpr.check_subnet
    private = route_table(LOCAL, S3_ENDPOINT, subnet_id="subnet-1")
    assert "vpce-1" in check(subnet(), VPC, [private], "r", "v")
    # any default route out, IPv4 or IPv6, NAT or internet gateway: refused, naming it
    for route, target in ((DEFAULT_TO_NAT, "nat-1"), (DEFAULT_TO_IGW, "igw-1"), (IPV6_OUT, "eigw-1")):
        tables = [route_table(LOCAL, S3_ENDPOINT, route, subnet_id="subnet-1")]
        with pytest.raises(GuardRefused, match=f"subnet-1 \\(Variable v\\) reaches the internet .*{target}"):
            check(subnet(), VPC, tables, "r", "v")
    # the VPC's main table decides for a subnet without its own; its own table wins (EC2's rule)
    with pytest.raises(GuardRefused, match="reaches the internet"):
        check(subnet(), VPC, [route_table(LOCAL, S3_ENDPOINT, DEFAULT_TO_NAT, main=True)], "r", "v")
    assert "vpce-1" in check(
        subnet(), VPC, [private, route_table(LOCAL, DEFAULT_TO_NAT, main=True)], "r", "v"
    )
    # public addresses are billed and needless; without an S3 endpoint nothing would install or read
    with pytest.raises(GuardRefused, match="public IPv4 addresses"):
        check(subnet(public_ip=True), VPC, [private], "r", "v")
    with pytest.raises(GuardRefused, match="has no route to an S3 gateway endpoint"):
        check(subnet(), VPC, [route_table(LOCAL, subnet_id="subnet-1")], "r", "v")


@pytest.mark.parametrize(
    ("output", "writable", "allowed"),
    [
        ("features/", "features/", True),
        ("features/experiment-1/", "features/", True),
        ("exports/", "exports/", True),  # a stack deployed with OutputPrefix=exports/
        ("exports/", "features/", False),
        ("feature/", "features/", False),
        ("uploads/dt=2026-11-01/", "features/", False),  # would overwrite photos if it could write there
    ],
)
def test_an_output_the_nodes_may_not_write_is_refused_at_once(output, writable, allowed):
    from fruits_platform.aws.settings import check_output_writable

    if allowed:
        check_output_writable(output, writable)
    else:
        with pytest.raises(GuardRefused, match=f"output {output} is outside what the EMR nodes may write"):
            check_output_writable(output, writable)
