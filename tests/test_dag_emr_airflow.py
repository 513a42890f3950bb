"""fruits_features_emr in Airflow's own terms, under moto with real Airflow (dag.test()): the trigger form's
empty defaults, the manual-run day, refused conf keys, the SNS failure alert received on an SQS queue.

No cluster runs here: each run stops at a guard (the cost guard, with a tiny budget), before any Spark.
"""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest

from tests.test_dag_emr import (  # noqa: F401 - fixtures
    BUCKET,
    REGION,
    assert_refused_before_cluster,
    aws,
    run_dag,
    task_output,
    xcom,
)

pytestmark = pytest.mark.slow
TRIGGER_DAY = "2026-11-07"


def upload_lemons(s3, sample_dir, day: str, count: int = 4) -> None:
    for path in sorted((sample_dir / "lemon").glob("*.jpg"))[:count]:
        s3.upload_file(str(path), BUCKET, f"uploads/dt={day}/lemon/{path.name}")


@pytest.mark.usefixtures("aws")
def test_form_defaults_take_the_variable_bucket_and_the_trigger_day(
    emr_dag, sample_dir, random_weights, monkeypatch, capfd
):
    """What the trigger form sends when bucket and input are left empty (null), on a manual run whose
    logical date the form pre-filled with the time of the click: the Variable's bucket, that day."""
    monkeypatch.setenv("AIRFLOW_VAR_FRUITS_BUCKET", BUCKET)
    s3 = boto3.client("s3", region_name=REGION)
    upload_lemons(s3, sample_dir, TRIGGER_DAY)
    upload_lemons(s3, sample_dir, "2026-11-06", 2)  # the day before: a scheduled run's day, not this one
    conf = {
        "bucket": None,
        "input": None,
        "weights": str(random_weights),
        "region": REGION,
        "budget_eur": 0.01,
    }
    clicked = dt.datetime(2026, 11, 7, 19, 40, tzinfo=dt.UTC)

    dagrun, states = run_dag(emr_dag, conf, clicked, logical_date=clicked)

    settings = xcom(dagrun, "resolve_run")
    assert (settings["bucket"], settings["dt"]) == (BUCKET, TRIGGER_DAY)
    assert settings["input_prefix"] == f"uploads/dt={TRIGGER_DAY}/"
    # it went as far as the cost guard, which counted that day's 4 images
    assert states["check_gdpr"] == "success"
    assert_refused_before_cluster(dagrun, states, "check_budget", "for 4 images", task_output(capfd))


def test_scheduled_run_processes_the_day_before(emr_dag):
    """The scheduler's view of the DAG's own timetable: the 02:00 run of day D reads dt=D-1, and a DAG that
    was never run waits for the next 02:00 when unpaused (no run for a past day beside a manual one)."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction
    from airflow.utils import timezone

    from fruits_platform import run_date

    timetable = coerce_to_core_timetable(emr_dag.timetable)
    now = timezone.utcnow()
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=False),
    )
    assert first.run_after > now
    assert first.run_after.hour == 2
    day = run_date.upload_day("scheduled", first.data_interval.start, first.logical_date, first.run_after)
    assert day == (first.run_after - dt.timedelta(days=1)).date().isoformat()


@pytest.mark.usefixtures("aws")
def test_unknown_conf_key_is_refused_with_the_known_params(emr_dag, random_weights, capfd):
    conf = {"bucket": BUCKET, "input_path": "uploads/x/", "weights": str(random_weights)}
    dagrun, states = run_dag(emr_dag, conf, dt.datetime(2026, 11, 7, 8, tzinfo=dt.UTC))

    reason = "run conf key(s) input_path match no param of this DAG; its params are: bucket, input, output"
    assert_refused_before_cluster(dagrun, states, "resolve_run", reason, task_output(capfd))


@pytest.fixture
def alerts_queue(request, monkeypatch):
    """An SNS topic as infra/ creates it, its ARN in the Variable, an SQS queue subscribed to it."""
    request.getfixturevalue("aws")  # moto, the bucket, the stack's Variables
    sns = boto3.client("sns", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name="fruits-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="fruits-alerts-test")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("AIRFLOW_VAR_FRUITS_ALERTS_TOPIC_ARN", topic)
    return sqs, queue


def received(sqs, queue: str) -> list[dict]:
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    return [json.loads(message["Body"]) for message in messages]


def test_a_failed_run_is_announced_on_the_topic(emr_dag, alerts_queue, sample_dir, random_weights):
    sqs, queue = alerts_queue
    upload_lemons(boto3.client("s3", region_name=REGION), sample_dir, TRIGGER_DAY)
    conf = {"bucket": BUCKET, "weights": str(random_weights), "region": REGION, "budget_eur": 0.01}
    clicked = dt.datetime(2026, 11, 7, 20, tzinfo=dt.UTC)

    dagrun, states = run_dag(emr_dag, conf, clicked, logical_date=clicked)

    assert dagrun.state == "failed"
    assert states["check_budget"] == "failed"
    (notification,) = received(sqs, queue)
    assert notification["Subject"] == "[fruits] fruits_features_emr failed"
    text = notification["Message"]
    assert f"fruits_features_emr run {dagrun.run_id}: task check_budget FAILED" in text
    assert "cost so far: no cluster cost recorded" in text
    assert "task log: http://localhost:8080/dags/fruits_features_emr/runs/" in text
    # the reason and the report's address are XComs: the dag-processor, which runs DAG callbacks, serves
    # them; dag.test() runs callbacks in-process, without that channel (test below for the full message)


def test_the_failure_message_names_reason_cost_and_links():
    from fruits_platform.aws.alerts import failure_message
    from fruits_platform.links import REPORT_URL_KEY

    xcoms = {
        ("watch_features", "failure"): {
            "message": "step features FAILED: cannot load weights",
            "log": "s3://b/l",
        },
        ("report_cost", "return_value"): {
            "cluster_id": "j-1",
            "cost": {"estimated_cost_eur": 0.42, "cluster_hours": 0.31, "budget_eur": 10},
        },
        ("resolve_run", REPORT_URL_KEY): "https://eu-west-3.console.aws.amazon.com/s3/object/b?prefix=r",
    }

    class Ti:  # what a DAG failure callback gets: the failed task instance, XComs of the run
        task_id = "watch_features"
        log_url = "http://airflow/log"

        def xcom_pull(self, task_ids, key="return_value"):
            return xcoms.get((task_ids, key))

    class Dag:
        dag_id = "fruits_features_emr"

    text = failure_message({"ti": Ti(), "run_id": "r1", "dag": Dag()}, "report_cost", "resolve_run")
    assert text.splitlines() == [
        "fruits_features_emr run r1: task watch_features FAILED: step features FAILED: cannot load weights",
        "cost so far: ~0.42 EUR for 0.31 cluster hours (cluster j-1, budget 10 EUR)",
        "task log: http://airflow/log",
        "step log: s3://b/l",
        "report: https://eu-west-3.console.aws.amazon.com/s3/object/b?prefix=r",
    ]


def test_without_the_topic_variable_nothing_is_sent_and_nothing_fails(monkeypatch):
    from fruits_platform.aws.alerts import FruitsSnsNotifier

    notifier = FruitsSnsNotifier(aws_conn_id="aws_default", message="m")
    notifier.target_arn = ""  # what the template renders to without the Variable
    # with an ARN it would publish (and, here without AWS, fail): it returns without a call
    assert notifier.notify({"dag": None}) is None


@pytest.mark.parametrize(
    ("counts", "alert"),
    [
        ({"files_seen": 10, "rejected": 1}, None),
        ({"files_seen": 10, "rejected": 2}, "2 of 10 files rejected (more than 10%)"),
        ({"files_seen": 0, "rejected": 0}, None),
    ],
)
def test_rejections_above_the_share_raise_an_alert(counts, alert):
    from fruits_platform.aws.alerts import too_many_rejections

    assert too_many_rejections(counts) == alert
