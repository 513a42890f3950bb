"""The day a run processes (fruits_platform.run_date): scheduled and backfill runs their interval's first
day, runs triggered by hand the UTC day of their logical date (what the trigger form shows)."""

from __future__ import annotations

import datetime as dt

from fruits_platform.aws import settings
from fruits_platform.run_date import upload_day

UTC = dt.UTC


def test_scheduled_run_reads_its_interval_start_day():
    start = dt.datetime(2026, 11, 4, 2, tzinfo=UTC)
    run_after = dt.datetime(2026, 11, 5, 2, tzinfo=UTC)
    assert upload_day("scheduled", start, run_after, run_after) == "2026-11-04"


def test_manual_run_reads_the_day_of_its_logical_date_not_its_interval():
    """Triggered at 19:40 with the form's pre-filled logical date: today, though the timetable's inferred
    interval starts the day before."""
    clicked = dt.datetime(2026, 11, 29, 19, 40, tzinfo=UTC)
    assert upload_day("manual", clicked - dt.timedelta(days=1), clicked, clicked) == "2026-11-29"


def test_manual_run_without_logical_date_reads_its_trigger_day():
    assert upload_day("manual", None, None, dt.datetime(2026, 11, 23, 9, 30, tzinfo=UTC)) == "2026-11-23"


def test_days_are_utc_days():
    paris = dt.timezone(dt.timedelta(hours=1))
    # 00:30 in Paris is still the previous day in UTC
    assert upload_day(
        "manual", None, dt.datetime(2026, 11, 4, 0, 30, tzinfo=paris), dt.datetime.now(UTC)
    ) == ("2026-11-03")


def test_backfill_runs_of_the_dag_timetable_map_to_their_days(emr_dag):
    """The scheduler's view: each backfill run of the DAG's own timetable reads its own day, the day before
    its run date (like the scheduled run of that date): --from-date 2026-11-02 starts with dt=2026-11-01."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    timetable = coerce_to_core_timetable(emr_dag.timetable)
    restriction = TimeRestriction(earliest=dt.datetime(2026, 11, 2, tzinfo=UTC), latest=None, catchup=True)
    last: DataInterval | None = None
    days = []
    for _ in range(3):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        last = info.data_interval
        days.append(upload_day("backfill", last.start, info.logical_date, info.run_after))
    assert days == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert settings.uploads_prefix(days[0]) == "uploads/dt=2026-11-01/"
