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


def estimate(**overrides) -> guards.CostEstimate:
    arguments = {
        "instance_type": "m5.xlarge",
        "core_nodes": 2,
        "use_spot": False,
        "images": 96_000,
        "idle_timeout_seconds": 900,
        "budget_eur": 10,
    }
    return guards.estimate_worst_case(TABLE, **{**arguments, **overrides})


def test_hourly_price_counts_every_node_and_spot_only_on_core_nodes():
    # 3 nodes x (0.20 + 0.05) USD = 0.75 USD/h = 0.375 EUR/h
    assert guards.cluster_hourly_eur(TABLE, "m5.xlarge", core_nodes=2, use_spot=False) == pytest.approx(0.375)
    # the primary stays On-Demand: (0.25 + 2 x 0.15) USD = 0.55 USD/h
    assert guards.cluster_hourly_eur(TABLE, "m5.xlarge", core_nodes=2, use_spot=True) == pytest.approx(0.275)


def test_worst_case_bills_every_node_for_the_idle_timeout_and_grows_with_the_batch():
    base = estimate()
    assert base.executor_vcpus == 8  # the two core nodes run the executors
    assert base.worst_case_eur == pytest.approx(base.hours * 0.375, abs=0.01)
    # a quarter hour more before auto-termination costs a quarter of the cluster's hourly price
    assert estimate(idle_timeout_seconds=1800).worst_case_eur - base.worst_case_eur == pytest.approx(
        0.375 / 4, abs=0.011
    )
    # the run part is linear in the images and shrinks with more executors
    extra_hours = estimate(images=192_000).hours - base.hours
    assert extra_hours > 0
    assert estimate(images=192_000, core_nodes=4).hours - estimate(core_nodes=4).hours == pytest.approx(
        extra_hours / 2, abs=1e-3
    )
    assert base.prices_as_of == "test table"


def test_single_node_cluster_computes_on_the_primary():
    table = pricing.load_price_table()
    assert guards.executor_vcpus(table, "m5.2xlarge", core_nodes=0) == 8
    assert guards.cluster_hourly_eur(table, "m5.2xlarge", 0, use_spot=True) == pytest.approx(
        (0.448 + 0.096) * table["usd_to_eur"]
    )


def test_budget_refusal_gives_the_figures():
    estimate = guards.estimate_worst_case(
        pricing.load_price_table(),
        instance_type="m5.xlarge",
        core_nodes=2,
        use_spot=False,
        images=100,
        idle_timeout_seconds=900,
        budget_eur=0.1,
    )
    with pytest.raises(GuardRefused) as refused:
        guards.check_budget(estimate)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{estimate.worst_case_eur:.2f} EUR exceeds budget_eur 0.1" in message
    assert "3 x m5.xlarge" in message
    assert "idle timeout 0.25" in message
    guards.check_budget(
        guards.estimate_worst_case(
            pricing.load_price_table(),
            instance_type="m5.xlarge",
            core_nodes=2,
            use_spot=False,
            images=100,
            idle_timeout_seconds=900,
            budget_eur=10,
        )
    )


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


def test_sensor_timeout_has_a_floor_and_grows_with_the_batch():
    assert guards.sensor_timeout_seconds(10, 8) == guards.SENSOR_TIMEOUT_FLOOR_SECONDS
    big = guards.sensor_timeout_seconds(1_000_000, 8)
    assert big > guards.SENSOR_TIMEOUT_FLOOR_SECONDS
    assert big >= guards.SENSOR_SAFETY_FACTOR * 1_000_000 / (guards.IMAGES_PER_SECOND_PER_VCPU * 8)
    assert guards.sensor_timeout_seconds(1_000_000, 16) < big


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
