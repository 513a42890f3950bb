"""The local Spark daemon: runs on it give what a spark-submit of their own gives, one daemon serves them in
turn, it makes way for other code, and a run without one still runs (real daemons, real Spark)."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pyarrow.parquet as pq
import pytest

from fruits_platform.local import runner, spark_daemon
from fruits_platform.pipeline import PipelineParams

# whole runs: `make test-fast` leaves them to `make test`
pytestmark = pytest.mark.slow

DAY = "2026-11-25"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_dir):
    folder = tmp_path_factory.mktemp("daemon-in")
    for label in ("apple", "lemon"):
        (folder / label).mkdir()
        for photo in sorted((sample_dir / label).glob("*.jpg"))[:4]:
            shutil.copy(photo, folder / label / photo.name)
    return folder


def params_for(photos, output, weights) -> PipelineParams:
    return PipelineParams(input=str(photos), output=str(output), dt=DAY, weights=str(weights), k=3)


def features_by_name(output) -> dict[str, list[float]]:
    rows = pq.read_table(output / "features" / f"dt={DAY}").to_pylist()
    return {
        row["path"].rsplit("/", 2)[-2] + "/" + row["path"].rsplit("/", 1)[-1]: row["features"] for row in rows
    }


def gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def daemon_runs(photos, random_weights, tmp_path_factory):
    """A run without a daemon (one that cannot start: the run falls back to its own spark-submit), then two
    runs on one daemon."""
    root = tmp_path_factory.mktemp("daemon-out")
    spark_daemon.stop()

    def cannot_start():
        raise spark_daemon.DaemonUnavailable("test: no daemon")

    patch = pytest.MonkeyPatch()
    patch.setattr(spark_daemon, "_start", cannot_start)
    echoed: list[str] = []
    try:
        runner.run_local(params_for(photos, root / "own", random_weights), echo=echoed.append)
    finally:
        patch.undo()
    reports, states = [], []
    for name in ("first", "second"):
        report, _ = runner.run_local(params_for(photos, root / name, random_weights), echo=lambda _: None)
        reports.append(report)
        states.append(spark_daemon.status())
    return root, echoed, reports, states


def test_a_run_the_daemon_cannot_take_runs_on_its_own_spark_submit(daemon_runs):
    root, echoed, _, _ = daemon_runs
    assert any("test: no daemon; running a spark-submit of its own" in line for line in echoed)
    log = (root / "own" / "_logs" / f"dt={DAY}" / "pipeline.log").read_text()
    assert "spark-submit" in log.splitlines()[1]
    assert len(features_by_name(root / "own")) == 8


def test_runs_on_one_daemon_give_what_their_own_spark_submit_gives(daemon_runs):
    root, _, reports, states = daemon_runs
    own = features_by_name(root / "own")
    for name in ("first", "second"):
        assert features_by_name(root / name) == own
        log = (root / name / "_logs" / f"dt={DAY}" / "pipeline.log").read_text()
        assert log.startswith("on the local Spark daemon")
        assert "=== fruits step pca done" in log
    assert [report["counts"]["featurised"] for report in reports] == [8, 8]
    # one daemon served both, in turn
    assert states[0]["pid"] == states[1]["pid"]
    assert [state["runs"] for state in states] == [1, 2]


def test_a_failed_step_on_the_daemon_says_its_reason_and_the_daemon_serves_on(daemon_runs, photos, tmp_path):
    _, _, _, states = daemon_runs
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not weights")
    with pytest.raises(runner.StepFailed) as failed:
        runner.run_local(params_for(photos, tmp_path / "out", broken), echo=lambda _: None)
    assert failed.value.step == "features"
    assert "cannot load weights" in failed.value.reason
    assert spark_daemon.status()["pid"] == states[-1]["pid"]


def test_two_runs_at_once_take_turns_on_one_daemon(daemon_runs, photos, random_weights, tmp_path):
    """The local DAG runs two tasks at once (a backfill): both runs end, each with its own outputs."""
    before = spark_daemon.status()
    reports = {}

    def run(name: str) -> None:
        params = params_for(photos, tmp_path / name, random_weights)
        reports[name] = runner.run_local(params, echo=lambda _: None)[0]

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [reports[name]["counts"]["featurised"] for name in ("a", "b")] == [8, 8]
    assert features_by_name(tmp_path / "a") == features_by_name(tmp_path / "b")
    after = spark_daemon.status()
    assert (after["pid"], after["runs"]) == (before["pid"], before["runs"] + 2)


def test_a_daemon_serving_other_code_makes_way(daemon_runs):
    pid = spark_daemon.status()["pid"]
    with pytest.raises(spark_daemon.DaemonUnavailable, match="other code"):
        spark_daemon.submit([], "not-this-code", dict(os.environ), lambda _: None)
    assert gone(pid)
    assert spark_daemon.status() is None


def test_stop_ends_the_daemon(daemon_runs):
    spark_daemon._start()
    pid = spark_daemon.status()["pid"]
    assert spark_daemon.stop()
    assert gone(pid)
    assert not spark_daemon.socket_path().exists()
    assert not spark_daemon.stop()
