"""Which upload day (``dt=YYYY-MM-DD``, UTC) a DAG run processes: one rule for both DAGs and the docs.

- A scheduled or backfill run processes its data interval's first day: the 02:00 UTC run of day D covers
  [D-1 02:00, D 02:00) and reads ``uploads/dt=D-1/``, a complete day.
- Any other run (triggered from the UI, the API or ``airflow dags trigger``) processes the UTC day of its
  logical date, which the trigger form pre-fills with now and shows before the click: by default the day
  someone uploads and triggers (``fruits upload`` writes today's ``dt=``). Without a logical date (possible in
  Airflow 3), the day it was triggered for (``run_after``).

A ``dt`` param, where a DAG has one, overrides both.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronTriggerTimetable

# The EMR DAG's schedule: daily at 02:00 UTC over [D-1 02:00, D 02:00), so the run of day D processes
# uploads/dt=D-1/. Used without a start_date and with run_immediately=timedelta(0), unpausing (the trigger
# form's "unpause on trigger") waits for the next 02:00 instead of starting the latest past interval beside
# the manual run: no second cluster at once. (run_immediately=False still runs a tick less than 2.4 h old:
# Airflow's buffer of a tenth of the period; the browser test met it at 02:00 UTC.)
SCHEDULE = CronTriggerTimetable(
    "0 2 * * *", timezone="UTC", interval=dt.timedelta(days=1), run_immediately=dt.timedelta(0)
)

# run types whose data interval is a complete day of uploads (DagRunType values)
INTERVAL_RUN_TYPES = frozenset({"scheduled", "backfill"})


def upload_day(
    run_type: str,
    data_interval_start: dt.datetime | None,
    logical_date: dt.datetime | None,
    run_after: dt.datetime,
) -> str:
    if run_type in INTERVAL_RUN_TYPES and data_interval_start is not None:
        moment = data_interval_start
    else:
        moment = logical_date or run_after
    return moment.astimezone(dt.UTC).date().isoformat()


def of_context(context) -> str:
    """``upload_day`` of the running task's DAG run (an Airflow task context)."""
    dag_run = context["dag_run"]
    run_type = getattr(dag_run.run_type, "value", dag_run.run_type)  # an enum in a task, a str elsewhere
    return upload_day(
        str(run_type), context.get("data_interval_start"), context.get("logical_date"), dag_run.run_after
    )
