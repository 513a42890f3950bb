"""One cluster for a range of days: the days, the step plan and each day's outcome, then the DAG
``fruits_features_emr_backfill`` under moto."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading

import boto3
import pytest

from fruits_platform.aws import backfill
from fruits_platform.aws.refusal import GuardRefused
from fruits_spark.contract import STEP_NAMES
from tests.dags import load_dag
from tests.test_assets import asset_events, latest_event_id
from tests.test_dag_emr import (  # noqa: F401 - aws, runner: fixtures
    BUCKET,
    LOGICAL_DATE,
    PROJECT_ROOT,
    REGION,
    UPLOAD_DAY,
    aws,
    base_conf,
    clusters,
    create_bucket,
    create_subnet,
    keys,
    lease_record,
    runner,
    set_emr_variables,
    task_output,
    xcom,
)


def test_a_range_is_every_day_between_included():
    assert backfill.days_in_range("2026-10-30", "2026-11-02") == [
        "2026-10-30",
        "2026-10-31",
        "2026-11-01",
        "2026-11-02",
    ]
    assert backfill.days_in_range("2026-11-05", "2026-11-05") == ["2026-11-05"]


@pytest.mark.parametrize(
    ("from_dt", "to_dt", "reason"),
    [
        ("2026-11-07", "2026-11-01", "to_dt 2026-11-01 is before from_dt 2026-11-07"),
        ("2026-01-01", "2026-03-01", "60 days from 2026-01-01 to 2026-03-01: at most 31"),
        ("2026-11-01", "", "must be dates YYYY-MM-DD"),
        ("11/01/2026", "2026-11-02", "must be dates YYYY-MM-DD"),
    ],
)
def test_an_unusable_range_is_refused_with_the_reason(from_dt, to_dt, reason):
    with pytest.raises(GuardRefused, match=reason):
        backfill.days_in_range(from_dt, to_dt)


def test_each_day_reads_its_uploads_and_writes_its_partitions():
    pipeline = {"input": "s3://b/whatever/", "output": "s3://b/features/", "dt": "2026-11-30", "k": 3}
    day = backfill.day_pipeline(pipeline, "b", "2026-11-02")
    assert (day.input, day.output, day.dt, day.k) == (
        "s3://b/uploads/dt=2026-11-02/",
        "s3://b/features/",
        "2026-11-02",
        3,
    )


def step(state: str, **failure) -> dict:
    return {"Status": {"State": state, **({"FailureDetails": failure} if failure else {})}}


def test_a_failed_day_is_reported_and_the_other_days_stay_done():
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    ids = [f"s-{i}" for i in range(len(days) * len(STEP_NAMES))]
    steps = {i: step("COMPLETED") for i in ids}
    # day 2's features failed; the next step ran anyway (CONTINUE) and failed for want of features
    features_at = len(STEP_NAMES) + STEP_NAMES.index("features")
    failed_id = f"s-{features_at}"
    steps[failed_id] = step("FAILED", Message="features: cannot load weights", LogFile="s3://b/emr-logs/x")
    steps[f"s-{features_at + 1}"] = step("FAILED")
    outcomes = backfill.day_outcomes(days, ids, steps)
    assert outcomes["2026-11-01"] == {"state": "COMPLETED"}
    assert outcomes["2026-11-03"] == {"state": "COMPLETED"}
    assert outcomes["2026-11-02"] == {
        "state": "FAILED",
        "step": "features",
        "step_id": failed_id,
        "reason": "features: cannot load weights",
        "log": "s3://b/emr-logs/x",
    }
    assert backfill.all_ended(ids, steps)
    steps[ids[-1]] = step("RUNNING")
    assert not backfill.all_ended(ids, steps)
    with pytest.raises(ValueError, match=f"{len(ids) - 1} step ids for {len(ids)} planned steps"):
        backfill.day_outcomes(days, ids[:-1], steps)


# -- the DAG, under moto ---------------------------------------------------------------------------------
RANGE_DAYS = [f"2026-11-0{day}" for day in range(1, 8)]
FAILING_DAY = "2026-11-04"


@pytest.fixture
def backfill_dag(airflow_db, monkeypatch):

    monkeypatch.setenv("FRUITS_EMR_POKE_SECONDS", "1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": REGION}})
    )
    return load_dag("fruits_features_emr_backfill")


class StepCompleter:
    """Plays the cluster without Spark: ends each pending or running step, FAILED for ``failing`` steps (a
    name suffix), COMPLETED otherwise. What the steps compute is tests/test_dag_emr.py's business; here, which
    steps a range makes and what becomes of a failed day."""

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.emr.models import emr_backends

        while not self._stop.wait(0.2):
            for cluster in list(emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters.values()):
                for step in cluster.steps:
                    if step.state in ("PENDING", "RUNNING"):
                        step.state = "FAILED" if step.name.endswith(self.failing) else "COMPLETED"


@pytest.mark.usefixtures("aws")
def test_seven_days_run_on_one_cluster_and_a_failed_day_loses_no_other(backfill_dag, random_weights):
    s3 = boto3.client("s3", region_name=REGION)
    for day in RANGE_DAYS:
        for name in ("a.jpg", "b.jpg"):
            s3.put_object(
                Bucket=BUCKET, Key=f"uploads/dt={day}/apple/{name}", Body=b"\xff\xd8 not decoded here"
            )
    conf = base_conf(random_weights, from_dt=RANGE_DAYS[0], to_dt=RANGE_DAYS[-1])
    with StepCompleter(failing=f"features dt={FAILING_DAY}"):
        dagrun = backfill_dag.test(run_after=dt.datetime(2026, 11, 9, 3, tzinfo=dt.UTC), run_conf=conf)
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}

    emr = boto3.client("emr", region_name=REGION)
    (only,) = emr.list_clusters()["Clusters"]  # one RunJobFlow for the seven days
    steps = list(reversed(emr.list_steps(ClusterId=only["Id"])["Steps"]))  # list_steps: newest first
    assert [s["Name"] for s in steps] == [f"{n} dt={d}" for d in RANGE_DAYS for n in STEP_NAMES]
    for step in steps:
        args = step["Config"]["Args"]
        day = step["Name"].split("dt=")[1]
        assert args[args.index("--dt") + 1] == day
        if step["Name"].startswith("ingest"):  # the later steps read ingest's output
            assert args[args.index("--input") + 1] == f"s3://{BUCKET}/uploads/dt={day}/"
        assert step["ActionOnFailure"] == "CONTINUE"
    assert only["Status"]["State"] == "TERMINATED"

    # the cost guard bounded the range: one start-up, every day's limits, one idle timeout and termination
    estimate = xcom(dagrun, "check_budget", "estimate")
    assert estimate["images"] == 2 * len(RANGE_DAYS)
    assert len(estimate["day_step_limits"]) == len(RANGE_DAYS)
    # the failed day is reported, the run fails after the report (check_days), the other six are done
    assert dagrun.state == "failed"
    assert (states["terminate_cluster"], states["report_range"], states["check_days"]) == (
        "success",
        "success",
        "failed",
    )
    # steps ended by hand wrote no report.json: nothing proves a day's data, so no asset event
    assert not [event for event in asset_events("fruits_features") if event[2] == dagrun.run_id]
    summary = json.loads(
        s3.get_object(
            Bucket=BUCKET, Key=f"outputs/reports/range={RANGE_DAYS[0]}_{RANGE_DAYS[-1]}/summary.json"
        )["Body"].read()
    )
    failed = {day: o for day, o in summary["days"].items() if o["state"] != "COMPLETED"}
    assert list(failed) == [FAILING_DAY]
    assert failed[FAILING_DAY]["step"] == "features"
    assert len(summary["days"]) == len(RANGE_DAYS)


def test_the_range_dag_checks_first_and_always_terminates(backfill_dag, emr_dag):
    order = [
        "resolve_range",
        "check_gdpr",
        "check_budget",
        "stage_artifacts",
        "cluster_spec",
        "take_lease",
        "create_cluster",
    ]
    order += ["add_steps", "watch_days", "terminate_cluster", "report_range", "release_lease", "check_days"]
    assert set(backfill_dag.task_ids) == set(order)
    for upstream, task_id in itertools.pairwise(order):
        assert task_id in backfill_dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {task_id}"
    assert backfill_dag.get_task("terminate_cluster").is_teardown
    assert backfill_dag.get_task("report_range").is_teardown
    assert backfill_dag.get_task("release_lease").is_teardown
    # the daily DAG's params, declared once, plus the range's days
    assert set(backfill_dag.params) == set(emr_dag.params) | {"from_dt", "to_dt"}
    assert backfill_dag.schedule is None  # manual runs only


@pytest.mark.usefixtures("aws")
def test_a_range_over_the_day_a_daily_run_holds_fails_at_once_naming_it(
    emr_dag, backfill_dag, random_weights, capfd, monkeypatch
):
    """The daily run of a day still writes it (its cluster left running: its lease stays) when a range that
    contains that day starts: the range fails before its cluster, naming the daily run, and keeps none of
    its days (all or nothing)."""
    # a range that is not refused fails in seconds (its steps never run here) instead of waiting for hours
    monkeypatch.setattr(backfill, "watch_timeout", lambda estimate: 3)
    s3 = boto3.client("s3", region_name=REGION)
    days = ["2026-11-04", UPLOAD_DAY, "2026-11-06"]
    for day in days:
        s3.put_object(Bucket=BUCKET, Key=f"uploads/dt={day}/apple/a.jpg", Body=b"\xff\xd8 not decoded here")
    daily = emr_dag.test(
        run_after=dt.datetime(2026, 11, 6, 21, tzinfo=dt.UTC),
        logical_date=LOGICAL_DATE,
        run_conf=base_conf(random_weights),
        mark_success_pattern=r"watch_.*|terminate_cluster",
    )
    (held,) = xcom(daily, "take_lease")
    output = xcom(daily, "resolve_run")["output_uri"]
    assert lease_record(s3, output)["token"] == held["token"]  # kept: the cluster may still write

    capfd.readouterr()  # the range's refusal, not the daily run's
    dagrun = backfill_dag.test(
        run_after=dt.datetime(2026, 11, 9, 4, tzinfo=dt.UTC),
        run_conf=base_conf(random_weights, from_dt=days[0], to_dt=days[-1]),
    )
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}

    assert dagrun.state == "failed"
    assert (states["take_lease"], states["create_cluster"]) == ("failed", "upstream_failed")
    assert len(clusters()) == 1  # the daily run's: the range started none
    refusals = [line for line in task_output(capfd).splitlines() if "AirflowFailException: " in line]
    holder = f"fruits_features_emr/{daily.run_id} (host "
    assert f"dt={UPLOAD_DAY} of {output} is being written by {holder}" in refusals[-1]
    assert lease_record(s3, output)["token"] == held["token"]  # the daily run's lease untouched
    assert lease_record(s3, output, days[0])["released"]  # taken before the held day, given back
    assert lease_record(s3, output, days[-1]) is None  # never taken


# two days prove what a week would: a first day, and a day reusing the day before on the same cluster (the
# seven-day range is the failed-day test's, whose steps are not run; which earlier day a row is reused from
# is tests/test_reuse.py's)
RUN_DAYS = RANGE_DAYS[:2]


def features_by_hash(s3, day: str) -> dict[str, bytes]:
    """A day's features on S3, as the bytes of each photo's vector, by content hash."""
    import io

    import numpy as np
    import pyarrow.parquet as pq

    rows = [
        row
        for key in keys(s3, f"outputs/features/dt={day}/")
        if key.endswith(".parquet")
        for row in pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())).to_pylist()
    ]
    return {row["content_hash"]: np.asarray(row["features"], dtype=np.float32).tobytes() for row in rows}


@pytest.mark.slow
@pytest.mark.usefixtures("aws", "runner")  # in this order: the runner's S3 client is made under moto
def test_a_range_on_one_cluster_writes_every_day_and_reuses_across_days(
    backfill_dag, sample_dir, random_weights
):
    """The range's steps really run (tests/emr_runner.py, Spark in this process): each day two photos, one
    of them the day before's, so every later day reuses one feature row from the day before."""
    s3 = boto3.client("s3", region_name=REGION)
    photos = sorted((sample_dir / "apple").glob("*.jpg"))[: len(RUN_DAYS) + 1]
    for i, day in enumerate(RUN_DAYS):
        for path in photos[i : i + 2]:
            s3.upload_file(str(path), BUCKET, f"uploads/dt={day}/apple/{path.name}")
    conf = base_conf(random_weights, from_dt=RUN_DAYS[0], to_dt=RUN_DAYS[-1], k=2)

    # a run id of its own: the other range test's run stays in the session's Airflow DB
    since = latest_event_id()
    dagrun = backfill_dag.test(run_after=dt.datetime(2026, 11, 10, 3, tzinfo=dt.UTC), run_conf=conf)

    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "success", states
    assert len(clusters()) == 1  # one RunJobFlow for the range

    def s3_json(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    for day, dataset in itertools.product(RUN_DAYS, ("features", "pca")):
        written = keys(s3, f"outputs/{dataset}/dt={day}/")
        assert any(key.endswith(".parquet") for key in written), (day, dataset)

    def reuse(day: str) -> tuple:
        report = s3_json(f"outputs/reports/dt={day}/report.json")
        counts = report["counts"]
        inferred = s3_json(f"outputs/_stats/dt={day}/features.json")["rows_inferred"]
        return counts["ok"], counts["featurised"], counts["reused"], report["reused_from"], inferred

    # day one computes both photos; each later day computes its new photo and reuses the day before's
    assert reuse(RUN_DAYS[0]) == (2, 2, 0, {}, 2)
    for previous, day in itertools.pairwise(RUN_DAYS):
        assert reuse(day) == (2, 1, 1, {previous: 1}, 1), day
        # found through the bucket (index, _SUCCESS markers and partitions survive the round trip), and the
        # reused row copied bit for bit
        assert f"outputs/features_index/dt={previous}/_SUCCESS" in keys(s3, "outputs/features_index/")
        earlier, later = features_by_hash(s3, previous), features_by_hash(s3, day)
        (shared,) = set(earlier) & set(later)
        assert later[shared] == earlier[shared]
    assert keys(s3, "outputs/_staging/") == []  # each day's staged copy is removed once the day is written
    # one features and one pca event per day, each naming its day's partition
    for alias, dataset in (("fruits_features", "features"), ("fruits_pca", "pca")):
        events = [(uri, extra) for uri, extra, _ in asset_events(alias, dagrun.run_id, since)]
        assert [(uri, extra["dt"], extra["rows"]) for uri, extra in events] == [
            (f"s3://{BUCKET}/outputs/{dataset}", day, 2) for day in RUN_DAYS
        ]
        assert [extra["partition"] for _, extra in events] == [
            f"s3://{BUCKET}/outputs/{dataset}/dt={day}" for day in RUN_DAYS
        ]
