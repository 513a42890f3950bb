"""Pure unit tests of the guards: cost estimate, EU allow-list, bucket region, run date -> uploads prefix."""

from __future__ import annotations

import datetime as dt

import pytest

from fruits_platform.aws import guards, pricing
from fruits_platform.aws.guards import GuardRefused

UTC = dt.UTC


# -- cost -------------------------------------------------------------------------------------------------
# a table of round figures: the expected prices below are worked out by hand, not by the module's formula
TABLE = {
    "usd_to_eur": 0.5,
    "as_of": "test table",
    "instances": {"m5.xlarge": {"vcpus": 4, "ec2_on_demand_usd": 0.2, "ec2_spot_usd": 0.1, "emr_usd": 0.05}},
}


def test_hourly_price_counts_every_node_and_spot_only_on_core_nodes():
    # 3 nodes x (0.20 + 0.05) USD = 0.75 USD/h = 0.375 EUR/h
    assert guards.cluster_hourly_eur(TABLE, "m5.xlarge", core_nodes=2, use_spot=False) == pytest.approx(0.375)
    # the primary stays On-Demand: (0.25 + 2 x 0.15) USD = 0.55 USD/h
    assert guards.cluster_hourly_eur(TABLE, "m5.xlarge", core_nodes=2, use_spot=True) == pytest.approx(0.275)


def bound(images=96_000, use_spot=False, core_nodes=2, budget_eur=10.0, **kwargs):
    return guards.estimate_worst_case(
        pricing.load_price_table(),
        instance_type="m5.xlarge",
        core_nodes=core_nodes,
        use_spot=use_spot,
        images=images,
        idle_timeout_seconds=900,
        budget_eur=budget_eur,
        ebs_gib_per_instance=94,
        **kwargs,
    )


def test_bound_covers_the_longest_run_the_limits_allow():
    """The sensors' timeouts (each step's limit, the first one plus start-up) and the idle timeout are what
    the run enforces: the bound's hours must cover all of them back to back."""
    estimate = bound()
    timeouts = guards.sensor_timeouts(estimate.step_limits)
    assert list(timeouts) == ["ingest", "features", "pca"]
    longest = sum(timeouts.values()) + max(900, guards.TERMINATION_SECONDS)
    assert estimate.hours * 3600 >= longest - 1
    # each limit leaves room for its step's expected compute: a normal run is never killed by it
    compute = guards.expected_compute_seconds(96_000, estimate.executor_vcpus)
    for name, share in guards.STEP_COMPUTE_SHARE.items():
        assert estimate.step_limits[name] >= guards.STEP_OVERHEAD_SECONDS + 2 * share * compute, name
    assert estimate.expected_hours < estimate.hours
    assert estimate.expected_eur < estimate.worst_case_eur


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
    assert bound(public_ipv4=False).hourly_eur < on_demand.hourly_eur


def test_fewer_executor_cores_mean_longer_limits():
    """Memory sizing may leave vCPUs without a Python worker: the limits follow the cores really used."""
    assert (
        bound(images=500_000, executor_cores=6).step_limits["features"]
        > bound(images=500_000).step_limits["features"]
    )


def test_single_node_cluster_computes_on_the_primary():
    table = pricing.load_price_table()
    assert guards.executor_vcpus(table, "m5.2xlarge", core_nodes=0) == 8
    assert guards.cluster_hourly_eur(table, "m5.2xlarge", 0, use_spot=True) == pytest.approx(
        (0.448 + 0.096) * table["usd_to_eur"]
    )


def test_budget_refusal_gives_the_figures():
    estimate = bound(images=100, budget_eur=0.1)
    with pytest.raises(GuardRefused) as refused:
        guards.check_budget(estimate)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{estimate.worst_case_eur:.2f} EUR exceeds budget_eur 0.1" in message
    assert "3 x m5.xlarge" in message
    assert "idle timeout 0.25" in message
    guards.check_budget(bound(images=100, budget_eur=10))


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


def test_step_limit_has_a_floor_and_grows_with_the_batch():
    assert set(guards.step_limits(10, 8).values()) == {guards.STEP_LIMIT_FLOOR_SECONDS}
    limits = guards.step_limits(1_000_000, 8)
    big = limits["features"]
    share = guards.STEP_COMPUTE_SHARE["features"]
    assert big >= guards.STEP_LIMIT_FACTOR * share * 1_000_000 / (guards.IMAGES_PER_SECOND_PER_VCPU * 8)
    assert guards.step_limits(1_000_000, 16)["features"] < big
    timeouts = guards.sensor_timeouts(limits)
    # every sensor outlasts its step's limit (the cluster's `timeout` says why first); only the first one
    # also waits for the cluster's start-up
    assert all(timeouts[name] > limit for name, limit in limits.items())
    assert (
        timeouts["ingest"] - limits["ingest"] - guards.STARTUP_LIMIT_SECONDS
        == timeouts["pca"] - limits["pca"]
    )


def test_actual_cost_from_timeline():
    created = dt.datetime(2026, 11, 5, 2, 0, tzinfo=UTC)
    hours, cost = guards.actual_cost_eur(2.0, created, created + dt.timedelta(minutes=45))
    assert (hours, cost) == (0.75, 1.5)
    assert guards.actual_cost_eur(2.0, created, created - dt.timedelta(seconds=1)) == (0.0, 0.0)


# -- GDPR -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "region", ["us-east-1", "eu-west-9", "me-central-1", "il-central-1", "", "eu-west-2", "eu-central-2"]
)
def test_other_regions_are_refused(region):
    with pytest.raises(GuardRefused, match="not in the EU allow-list"):
        guards.check_region(region)


@pytest.mark.parametrize("region", ["eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1"])
def test_regions_of_eu_member_states_pass(region):
    assert guards.check_region(region) == region


def test_allow_list_matches_what_infra_can_deploy_to():
    from cfnlint.decode import decode

    template, _ = decode("infra/fruits-infra.yaml")
    allowed = str(template.get("Rules", {}))
    assert all(region in allowed for region in guards.EU_REGIONS)
    assert "eu-west-2" not in allowed


@pytest.mark.parametrize(
    ("constraint", "region"),
    [(None, "us-east-1"), ("", "us-east-1"), ("EU", "eu-west-1"), ("eu-west-3", "eu-west-3")],
)
def test_bucket_region_from_location_constraint(constraint, region):
    assert guards.bucket_region(constraint) == region


def test_bucket_must_be_in_the_run_region():
    guards.check_bucket_region("b", "eu-west-3", "eu-west-3")
    with pytest.raises(GuardRefused, match="bucket b is in eu-central-1, not in the run's region eu-west-3"):
        guards.check_bucket_region("b", "eu-central-1", "eu-west-3")
    with pytest.raises(GuardRefused, match="bucket b is in us-east-1"):
        guards.check_bucket_region("b", None, "eu-west-3")


def test_bucket_is_required_and_valid():
    with pytest.raises(GuardRefused, match="param bucket is required"):
        guards.require_bucket("")
    with pytest.raises(GuardRefused, match="not a valid S3 bucket name"):
        guards.require_bucket("Bad_Bucket")
    assert guards.require_bucket(" fruits-data ") == "fruits-data"


def test_default_encryption_is_required():
    assert guards.check_default_encryption(
        "b", [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
    ) == ("aws:kms")
    with pytest.raises(GuardRefused, match="no default server-side encryption"):
        guards.check_default_encryption("b", [])


# -- run date -> uploads prefix ---------------------------------------------------------------------------
def test_scheduled_run_reads_its_interval_start_day():
    start = dt.datetime(2026, 11, 4, 2, tzinfo=UTC)
    run_after = dt.datetime(2026, 11, 5, 2, tzinfo=UTC)
    assert guards.upload_date(start, start, run_after) == "2026-11-04"


def test_manual_run_without_logical_date_reads_its_trigger_day():
    assert guards.upload_date(None, None, dt.datetime(2026, 11, 23, 9, 30, tzinfo=UTC)) == "2026-11-23"


def test_logical_date_without_interval_and_timezones():
    paris = dt.timezone(dt.timedelta(hours=1))
    assert guards.upload_date(
        None, dt.datetime(2026, 11, 3, 12, tzinfo=UTC), dt.datetime(2026, 11, 9, tzinfo=UTC)
    ) == ("2026-11-03")
    # 00:30 in Paris is still the previous day in UTC
    assert (
        guards.upload_date(
            dt.datetime(2026, 11, 4, 0, 30, tzinfo=paris), None, dt.datetime(2026, 11, 9, tzinfo=UTC)
        )
        == "2026-11-03"
    )


def test_backfill_runs_of_the_dag_timetable_map_to_their_days():
    """The scheduler's view: each backfill/scheduled run of the daily timetable reads its own day."""
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable

    timetable = CronDataIntervalTimetable("0 2 * * *", timezone="UTC")
    restriction = TimeRestriction(earliest=dt.datetime(2026, 11, 1, tzinfo=UTC), latest=None, catchup=True)
    last: DataInterval | None = None
    days = []
    for _ in range(3):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        last = info.data_interval
        days.append(guards.upload_date(last.start, info.logical_date, info.run_after))
    assert days == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert guards.uploads_prefix(days[0]) == "uploads/dt=2026-11-01/"


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
    assert guards.input_prefix(param, "2026-11-05") == expected


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
        guards.require_variables({"fruits_emr_service_role": "r", "fruits_emr_subnet_id": "", "b": None})
    assert "Airflow Variable(s) b, fruits_emr_subnet_id not set" in str(refused.value)
    assert guards.require_variables({"a": "x"}) == {"a": "x"}


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
        guards.check_subnet(subnet(tagged=tagged_subnet), vpc, tables, "eu-west-3", "fruits_emr_subnet_id")
    assert refused in str(error.value)


def test_subnet_needs_a_route_to_pypi():
    check = guards.check_subnet
    # private subnet behind a NAT gateway (through the VPC's main table): fine
    assert "NAT gateway nat-1" in check(
        subnet(), VPC, [route_table(LOCAL, DEFAULT_TO_NAT, main=True)], "r", "v"
    )
    # public subnet: an internet gateway route is only usable with public IPs on the instances
    public = [route_table(LOCAL, DEFAULT_TO_IGW, subnet_id="subnet-1")]
    assert "internet gateway igw-1" in check(subnet(public_ip=True), VPC, public, "r", "v")
    for tables, node in ((public, subnet()), ([route_table(LOCAL, main=True)], subnet(public_ip=True))):
        with pytest.raises(GuardRefused, match="no route to the internet"):
            check(node, VPC, tables, "r", "v")
    # the subnet's own table wins over the main one (EC2's rule)
    own_without_route = route_table(LOCAL, subnet_id="subnet-1")
    with pytest.raises(GuardRefused, match="no route to the internet"):
        check(subnet(), VPC, [own_without_route, route_table(LOCAL, DEFAULT_TO_NAT, main=True)], "r", "v")


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
