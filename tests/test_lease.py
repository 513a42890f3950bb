"""One writer per day (fruits_platform.lease): two runs of one day at once, a crashed run's lease, a release
that must not free another run's lease; on a local output and on S3 (moto)."""

from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from fruits_platform import lease
from fruits_platform.lease import LeaseHeld

DAY = "2026-11-05"
BUCKET = "fruits-lease-test"
REGION = "eu-west-3"
OUTPUT = f"s3://{BUCKET}/features/"
KEY = f"features/_leases/dt={DAY}.json"


def crashed_run(**overrides) -> dict:
    """The record a run on another machine left when it died, its expiry passed."""
    return {
        "output": "out",
        "dt": DAY,
        "holder": "fruits_features_emr/manual__crashed",
        "host": "worker-elsewhere",
        "pid": 4242,
        "since": "2026-11-05T01:00:00Z",
        "expires": "2026-11-05T02:00:00Z",
        "token": "0" * 32,
        "process_bound": False,
        **overrides,
    }


# -- local output -------------------------------------------------------------------------------------------
def _contend(output: str, holder: str, barrier, results) -> None:
    """One of two processes taking the same day at the same moment; the winner holds it a while."""
    import os

    barrier.wait()
    try:
        taken = lease.acquire(output, DAY, holder, process_bound=True)
    except LeaseHeld as held:
        results.put(("held", holder, os.getpid(), str(held)))
        return
    results.put(("won", holder, os.getpid(), taken.location))
    time.sleep(1.5)  # still holding while the other one looks
    taken.release()


def test_two_local_runs_of_one_day_exactly_one_wins_and_the_other_names_it(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    output = str(tmp_path / "out")
    workers = [
        context.Process(target=_contend, args=(output, f"run-{name}", barrier, results)) for name in "ab"
    ]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)

    assert [outcome[0] for outcome in outcomes] == ["held", "won"]
    (_, loser, _, message), (_, winner, winner_pid, location) = outcomes
    assert loser != winner
    assert location == f"{output}/_leases/dt={DAY}.json"
    assert message.startswith(f"dt={DAY} of {output} is being written by {winner} ")
    assert f"(host {socket.gethostname()}, pid {winner_pid}) since 20" in message
    assert f"delete {location} to take the day now" in message
    # the winner released it: the day is free again
    assert not (tmp_path / "out" / "_leases" / f"dt={DAY}.json").exists()
    lease.acquire(output, DAY, "run-c").release()


def test_a_crashed_runs_expired_lease_is_taken_over_with_a_message(tmp_path, caplog):
    output = str(tmp_path / "out")
    path = tmp_path / "out" / "_leases" / f"dt={DAY}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(crashed_run()))

    with caplog.at_level("WARNING", logger="fruits_platform.lease"):
        taken = lease.acquire(output, DAY, "run-new")

    expected = (
        f"took over the lease on dt={DAY} of {output} from fruits_features_emr/manual__crashed "
        "(host worker-elsewhere, pid 4242), since 2026-11-05T01:00:00Z: it expired at 2026-11-05T02:00:00Z"
    )
    assert taken.taken_over == expected
    assert expected in caplog.text
    assert json.loads(path.read_text())["holder"] == "run-new"
    # while run-new holds it, the same crashed record's expiry is no longer what counts
    with pytest.raises(LeaseHeld, match="is being written by run-new "):
        lease.acquire(output, DAY, "run-other")
    assert taken.release()


def test_a_live_lease_is_not_taken_over_until_it_expires(tmp_path):
    output = str(tmp_path / "out")
    first = lease.acquire(output, DAY, "run-a", ttl_seconds=1)
    with pytest.raises(LeaseHeld, match=f"until|ends at {first.expires}"):
        lease.acquire(output, DAY, "run-b")
    time.sleep(1.1)
    second = lease.acquire(output, DAY, "run-b")
    assert second.taken_over.endswith(f"it expired at {first.expires}")
    # run-a comes back late: it must not free run-b's lease
    assert first.release() is False
    with pytest.raises(LeaseHeld, match="being written by run-b "):
        lease.acquire(output, DAY, "run-c")
    assert second.release() is True


def test_a_killed_local_run_frees_the_day_at_once(tmp_path):
    """A run killed before its release (kill -9, OOM): its lease names a process gone from this host."""
    output = str(tmp_path / "out")
    script = (
        "import os, sys\n"
        "from fruits_platform import lease\n"
        f"lease.acquire({output!r}, {DAY!r}, 'run-killed', process_bound=True)\n"
        "print(os.getpid())\n"
        "sys.stdout.flush()\n"
        "os._exit(9)\n"
    )
    pid = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False).stdout
    taken = lease.acquire(output, DAY, "run-next")
    assert taken.taken_over.endswith(f"its process {pid.strip()} on {socket.gethostname()} is gone")
    taken.release()


def test_holding_waits_for_the_holder_and_releases_when_its_block_fails(tmp_path):
    output = str(tmp_path / "out")
    first = lease.acquire(output, DAY, "run-a")
    threading.Timer(0.5, first.release).start()
    started, seen = time.monotonic(), {}

    def failing_run() -> None:
        with lease.holding(output, DAY, "run-b", wait_seconds=10) as held:
            seen.update(holder=held.holder, waited=time.monotonic() - started)
            raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        failing_run()
    assert seen["holder"] == "run-b"
    assert seen["waited"] >= 0.4  # it waited for run-a
    # released although the block failed
    assert not (tmp_path / "out" / "_leases" / f"dt={DAY}.json").exists()


def test_an_earlier_try_of_the_same_run_is_retaken_only_when_asked(tmp_path):
    output = str(tmp_path / "out")
    lease.acquire(output, DAY, "dag/run-1")
    with pytest.raises(LeaseHeld):
        lease.acquire(output, DAY, "dag/run-1")  # two CLI runs naming themselves alike must not share
    again = lease.acquire(output, DAY, "dag/run-1", retake=True)
    assert again.taken_over.endswith("an earlier try of this run held it")
    assert again.release()


def test_a_lease_is_a_real_days_file_under_the_output():
    assert lease.lease_location("s3://b/features/", DAY) == f"s3://b/features/_leases/dt={DAY}.json"
    with pytest.raises(ValueError, match="real date"):
        lease.lease_location("s3://b/features/", "2026-13-45")
    with pytest.raises(ValueError, match="no lease backend for hdfs://"):
        lease.acquire("hdfs://nn/out", DAY, "run")


# -- S3, under moto -----------------------------------------------------------------------------------------
@pytest.fixture
def s3(monkeypatch):
    from moto.s3.responses import S3Response

    # S3 checks a write's condition and writes in one step; moto checks, then writes, and two threads can
    # interleave there: one lock makes moto's put as atomic as S3's
    atomic, put = threading.Lock(), S3Response.put_object

    def put_object(self, *args, **kwargs):
        with atomic:
            return put(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", put_object)
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def stored(s3) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())


def test_two_runs_of_one_day_on_s3_exactly_one_wins_and_the_other_names_it(s3):
    barrier, outcomes = threading.Barrier(2), {}

    def contend(holder: str) -> None:
        barrier.wait()
        try:
            outcomes[holder] = lease.acquire(OUTPUT, DAY, holder, s3=s3)
        except LeaseHeld as held:
            outcomes[holder] = held

    threads = [threading.Thread(target=contend, args=(f"dag/run-{name}",)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    won = [value for value in outcomes.values() if isinstance(value, lease.Lease)]
    lost = [value for value in outcomes.values() if isinstance(value, LeaseHeld)]
    assert (len(won), len(lost)) == (1, 1)
    (winner,), (held,) = won, lost
    assert stored(s3)["holder"] == winner.holder
    assert str(held).startswith(f"dt={DAY} of {OUTPUT} is being written by {winner.holder} ")
    assert f"pid {winner.pid}) since {winner.since}; its lease ends at {winner.expires}" in str(held)
    assert winner.release()
    # released: the record stays, marked so (the Airflow identity never deletes), and the day is free
    assert stored(s3)["released"]
    assert lease.acquire(OUTPUT, DAY, "dag/run-c", s3=s3).taken_over is None


def test_a_stale_s3_lease_is_taken_over_once_and_the_late_holder_frees_nothing(s3, caplog):
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=json.dumps(crashed_run(output=OUTPUT)).encode())
    stale_etag = s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"]

    with caplog.at_level("WARNING", logger="fruits_platform.lease"):
        taken = lease.acquire(OUTPUT, DAY, "dag/run-new", s3=s3)
    assert taken.taken_over == (
        f"took over the lease on dt={DAY} of {OUTPUT} from fruits_features_emr/manual__crashed "
        "(host worker-elsewhere, pid 4242), since 2026-11-05T01:00:00Z: it expired at 2026-11-05T02:00:00Z"
    )
    assert taken.taken_over in caplog.text
    # a second run that read the same stale lease loses the race: its If-Match names the old ETag
    other = lease._S3Backend(f"s3://{BUCKET}/{KEY}", s3)
    assert other.replace(json.dumps(crashed_run(holder="dag/run-late")), stale_etag) is None
    assert stored(s3)["holder"] == "dag/run-new"

    # the crashed run comes back and releases: run-new keeps the day
    crashed = lease.Lease.from_dict(
        {**crashed_run(output=OUTPUT), "location": f"s3://{BUCKET}/{KEY}", "version": stale_etag}, s3=s3
    )
    assert crashed.release() is False
    assert stored(s3)["holder"] == "dag/run-new"
    assert "not released: it is now held by dag/run-new" in caplog.text
    # the lease travels as a dict (an XCom) to the task that releases it
    assert lease.Lease.from_dict(taken.as_dict(), s3=s3).release() is True


def test_an_s3_conflict_409_is_retried(s3, monkeypatch):
    """S3 answers 409 ConditionalRequestConflict while another conditional write of the key is in flight."""
    put, calls = s3.put_object, []

    def conflicting_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise ClientError(
                {
                    "Error": {"Code": "ConditionalRequestConflict", "Message": "conflict"},
                    "ResponseMetadata": {"HTTPStatusCode": 409},
                },
                "PutObject",
            )
        return put(**kwargs)

    monkeypatch.setattr(s3, "put_object", conflicting_once)
    taken = lease.acquire(OUTPUT, DAY, "dag/run-a", s3=s3)
    assert [call.get("IfNoneMatch") for call in calls] == ["*", "*"]
    assert stored(s3)["token"] == taken.token
