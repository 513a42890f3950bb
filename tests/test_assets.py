"""The outputs as Airflow Assets: a real local run (dag.test(), Spark on a few sample images) emits the
features and PCA events, the scheduler's own code turns them into a run of the consumer DAG, which reads
the day.

A failed run emits none.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.corpus import copy_sample
from tests.dags import load_dag
from tests.inprocess import QUALITY_OFF

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_DAG_ID = "fruits_features_local"
CONSUMER_DAG_ID = "fruits_features_consumer"
DAY = "2026-11-05"
IMAGES_PER_LABEL = 2

pytestmark = pytest.mark.slow


def dag_of(dag_id: str):
    return load_dag(dag_id)


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_dir: Path) -> Path:
    return copy_sample(sample_dir, tmp_path_factory.mktemp("images"), IMAGES_PER_LABEL)


def asset_events(alias: str, run_id: str | None = None, since: int = 0) -> list:
    """Every event emitted through ``alias`` (by the DAG run ``run_id`` where given), oldest first, of those
    after the event ``since`` (``latest_event_id()``): the test files of one process share an Airflow DB,
    and ``dag.test()`` gives every run of a DAG at one logical date the same run id."""
    from airflow.models.asset import AssetAliasModel, AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .where(AssetEvent.source_aliases.any(AssetAliasModel.name == alias), AssetEvent.id > since)
            .order_by(AssetEvent.id)
        ).all()
        return [
            (event.asset.uri, dict(event.extra), event.source_run_id)
            for event in events
            if run_id is None or event.source_run_id == run_id
        ]


def latest_event_id() -> int:
    """The id of the Airflow DB's latest asset event (0: none yet)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(select(func.max(AssetEvent.id))) or 0


def why_failed(dagrun, output: Path) -> str:
    """The run's task states and the tail of its Spark log: what a failure in CI must show, as the task
    output pytest captured is cut there."""
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    logs = sorted((output / "_logs").rglob("*.log")) if (output / "_logs").is_dir() else []
    tails = [f"--- {log}\n" + "".join(log.read_text().splitlines(keepends=True)[-40:]) for log in logs]
    return "\n".join([f"task states: {states}", *tails])


def set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.get(DagModel, dag_id).is_paused = paused


def schedule_and_run_consumer():
    """What the scheduler does with queued asset events (its own code), then the consumer's tasks run
    in-process like dag.test() runs them. Returns the consumer's run."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    consumer = dag_of(CONSUMER_DAG_ID)
    with create_session() as session:
        runner = SchedulerJobRunner(job=Job())
        with prohibit_commit(session) as guard:
            runner._create_dagruns_for_dags(guard, session)
            guard.commit()
        dagrun = session.scalars(select(DagRun).where(DagRun.dag_id == CONSUMER_DAG_ID)).one()
        dagrun.dag = SerializedDagModel.get_dag(CONSUMER_DAG_ID, session=session)
        dagrun.state = DagRunState.RUNNING
        session.commit()
        while dagrun.state == DagRunState.RUNNING:
            schedulable, _ = dagrun.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in dagrun.get_task_instances(state=TaskInstanceState.SCHEDULED, session=session):
                _run_task(ti=ti, task=consumer.task_dict[ti.task_id], run_triggerer=False)
            session.expire_all()
        return dagrun.run_id, dagrun.state


def xcom(dag_id: str, run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key="return_value")
        ).first()
        return XComModel.deserialize_value(row) if row else None


@pytest.mark.usefixtures("local_dag_in_process")
def test_a_local_run_publishes_its_day_and_the_consumer_reads_it(
    airflow_db, images, random_weights, tmp_path
):
    import pyarrow.parquet as pq

    output = tmp_path / "out"
    producer = dag_of(LOCAL_DAG_ID)
    conf = {
        "input": str(images),
        "output": str(output),
        "weights": str(random_weights),
        "k": 3,
        "dt": DAY,
        **QUALITY_OFF,
    }
    # a first run (syncs the dags folder, so the consumer DAG is known) failing: weights the ONNX export
    # refuses, the steps never run, no event
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not an HDF5 file")
    failed = producer.test(
        run_after=dt.datetime(2026, 11, 5, 9, tzinfo=dt.UTC),
        logical_date=None,
        run_conf={**conf, "weights": str(broken)},
    )
    assert failed.state == "failed"
    assert asset_events("fruits_features", failed.run_id) == []
    assert asset_events("fruits_pca", failed.run_id) == []

    set_paused(CONSUMER_DAG_ID, False)
    dagrun = producer.test(
        run_after=dt.datetime(2026, 11, 5, 10, tzinfo=dt.UTC), logical_date=None, run_conf=conf
    )
    assert dagrun.state == "success", why_failed(dagrun, output)

    (features_event,) = asset_events("fruits_features", dagrun.run_id)
    (pca_event,) = asset_events("fruits_pca", dagrun.run_id)
    n_images = sum(1 for _ in images.rglob("*.jpg"))
    for (uri, extra, run_id), dataset in ((features_event, "features"), (pca_event, "pca")):
        assert uri == (output / dataset).as_uri()
        assert run_id == dagrun.run_id
        assert extra["dt"] == DAY
        assert extra["partition"] == f"{uri}/dt={DAY}"
        assert extra["rows"] == extra["counts"]["ok"] == n_images
        assert extra["embedding"]
        # 8 rows are fewer than a kept PCA model needs: the day's own fit, announced as such
        assert (extra["pca_model"], extra["pca_model_version"]) == ("provisional", "provisional")
        assert extra["report"] == str(output / "reports" / f"dt={DAY}" / "report.html")
    # the pca rows name the model version the event announces
    versions = pq.read_table(output / "pca" / f"dt={DAY}").column("pca_model_version").to_pylist()
    assert set(versions) == {pca_event[1]["pca_model_version"]}
    assert len(versions) == n_images

    run_id, state = schedule_and_run_consumer()
    assert state == "success"
    # the consumer reads every features event queued since its last run: this run's, and those of DAG
    # runs earlier in this test session (other tests, other outputs)
    partitions = [
        p
        for p in xcom(CONSUMER_DAG_ID, run_id, "read_partition")
        if p["partition"].startswith(output.as_uri())
    ]
    assert [(p["dt"], p["partition"]) for p in partitions] == [
        (DAY, f"{(output / 'features').as_uri()}/dt={DAY}")
    ]
    assert Path(partitions[0]["partition"].removeprefix("file://")).is_dir()


def test_local_dag_refuses_a_conf_key_no_param_declares(airflow_db, capfd):
    """``input_path`` (the name before the contract) would otherwise run over the default sample."""
    dagrun = dag_of(LOCAL_DAG_ID).test(
        run_after=dt.datetime(2026, 11, 5, 11, tzinfo=dt.UTC),
        logical_date=None,
        run_conf={"input_path": "/x"},
    )
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "failed"
    assert states["resolve_params"] == "failed"
    assert states["spark_steps"] == "upstream_failed"
    output = capfd.readouterr()
    assert "run conf key(s) input_path match no param of this DAG; its params are: input, output" in (
        output.out + output.err
    )
