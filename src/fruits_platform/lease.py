"""One writer per day: a run holds a lease on ``dt=D`` of its output from its first write to its publish.

Every run of a day stages into the same ``_staging/<dataset>/dt=D`` and its publish deletes and moves what it
finds there (``fruits_spark.publish``): two runs of one day at once mix their outputs. ``max_active_runs``
holds within one DAG only; a backfill range, a manual run of the daily DAG and ``fruits run-local`` all
reach the same day. So each takes the day's lease first, ``<output>/_leases/dt=D.json`` (the underscore keeps
Spark's readers off it), and a second run of the day fails at once naming the holder, or waits for it.

The rule is the same on both backends: the lease is created only if no lease is there, atomically.

* S3: ``PutObject`` with ``If-None-Match: *`` (412 PreconditionFailed when it exists; 409
  ConditionalRequestConflict while a concurrent conditional write is in flight, retried). An expired lease
  is replaced with ``If-Match: <its ETag>``, so of two runs taking over the same stale lease one wins. A
  release overwrites the lease with a record marked ``released`` (``If-Match`` again), rather than deleting
  it: the Airflow policy never deletes objects (infra/, tests/test_infra.py).
* Local: ``os.open(O_CREAT | O_EXCL)`` of the lease file. Taking over and releasing compare the file with
  what was read under an ``fcntl.flock`` of a lock file beside it, which a crashed process cannot keep.

A lease left by a crashed run expires: the holder writes its expiry (``ttl_seconds``: the EMR DAGs derive it
from the cluster's enforced time limits). A lease bound to its process (``holding``) is also stale as soon as
that process is gone from this host. Taking over says so (a warning, and ``Lease.taken_over``).

No Spark, no Airflow here; boto3 only inside the S3 backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fruits_spark.layout import Layout

log = logging.getLogger(__name__)

LEASES_FOLDER = "_leases"
# A run with no time limit of its own (a local run): long enough for a large day on one machine, short
# enough that a crashed run on another host blocks the day for one working session at most. A crashed run
# on this host frees it at once (its process is gone). The EMR DAGs pass their own, from the cluster's limits.
DEFAULT_TTL_SECONDS = 6 * 3600
DEFAULT_POLL_SECONDS = 5.0
# S3 answers 409 ConditionalRequestConflict while another conditional write of the key is in flight: retried
CONFLICT_RETRIES = 5
SSE_ALGORITHM = "AES256"  # as every other object the platform writes (aws.staging)


class LeaseHeld(RuntimeError):
    """Another run holds the day: the message names it (run, host, pid, since when, until when)."""

    def __init__(self, record: dict[str, Any], location: str) -> None:
        self.record = record
        self.location = location
        super().__init__(
            f"dt={record.get('dt')} of {record.get('output')} is being written by {describe(record)} "
            f"since {record.get('since')}; its lease ends at {record.get('expires')} ({location}). Let that "
            f"run finish; if it died, its lease expires then, or delete {location} to take the day now"
        )


def describe(record: dict[str, Any]) -> str:
    return f"{record.get('holder')} (host {record.get('host')}, pid {record.get('pid')})"


def lease_location(output_uri: str, dt: str) -> str:
    """``<output>/_leases/dt=D.json``; ValueError for a dt that is not a real day."""
    return f"{Layout(output_uri, dt).output}/{LEASES_FOLDER}/dt={dt}.json"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _process_gone(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError, OverflowError):
        return False  # another user's process is alive; an unusable pid proves nothing
    return False


def stale_reason(record: dict[str, Any] | None, holder: str, retake: bool) -> str | None:
    """Why a lease found in place may be taken over, or None while it holds."""
    if record is None:
        return "its lease was unreadable (a crash while writing it)"
    if record.get("released"):
        return ""  # a released lease (S3 keeps the record): free, nothing to say
    if retake and record.get("holder") == holder:
        return "an earlier try of this run held it"
    try:
        expires = datetime.fromisoformat(str(record["expires"]))
    except (KeyError, ValueError):
        return "its lease has no readable expiry"
    if _now() >= expires:
        return f"it expired at {record['expires']}"
    here = record.get("host") == socket.gethostname()
    if record.get("process_bound") and here and _process_gone(record.get("pid")):
        return f"its process {record.get('pid')} on {record.get('host')} is gone"
    return None


def _parse(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# -- backends: create if absent, read, replace or clear if unchanged ---------------------------------------
class _Conflict(Exception):
    """A concurrent conditional write of the key (S3's 409): try again."""


class _LocalBackend:
    def __init__(self, location: str) -> None:
        self.location = location
        self.path = Path(location.removeprefix("file://"))
        # never deleted: a lock file removed while locked would let two processes lock two different files
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
            yield

    @staticmethod
    def _version(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _write_new(self, body: str) -> str:
        descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(descriptor, "wb") as file:
            file.write(body.encode())
            file.flush()
            os.fsync(file.fileno())
        return self._version(body.encode())

    def create(self, body: str) -> str | None:
        with self._locked():
            try:
                return self._write_new(body)
            except FileExistsError:
                return None

    def _current(self) -> tuple[str, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data.decode(errors="replace"), self._version(data)

    def read(self) -> tuple[str, str] | None:
        with self._locked():
            return self._current()

    def replace(self, body: str, version: str) -> str | None:
        with self._locked():
            current = self._current()
            if current is None or current[1] != version:
                return None
            self.path.unlink()
            return self._write_new(body)

    def clear(self, version: str, released_body: str) -> bool:
        with self._locked():
            current = self._current()
            if current is None or current[1] != version:
                return False
            self.path.unlink()
            return True


class _S3Backend:
    def __init__(self, location: str, client=None) -> None:
        self.location = location
        self.bucket, _, self.key = location.split("://", 1)[1].partition("/")
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.s3 = client

    @staticmethod
    def _status(error) -> tuple[str, int]:
        return str(error.response.get("Error", {}).get("Code", "")), int(
            error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        )

    def _put(self, body: str, **condition) -> str | None:
        from botocore.exceptions import ClientError

        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=body.encode(),
                ContentType="application/json",
                ServerSideEncryption=SSE_ALGORITHM,
                **condition,
            )
        except ClientError as error:
            code, status = self._status(error)
            if code == "ConditionalRequestConflict" or status == 409:
                raise _Conflict from None
            # 412: it exists (If-None-Match) or changed (If-Match); 404: it vanished (If-Match)
            if code in ("PreconditionFailed", "NoSuchKey") or status in (412, 404):
                return None
            raise
        return response["ETag"]

    def create(self, body: str) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[str, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            code, status = self._status(error)
            if code == "NoSuchKey" or status == 404:
                return None
            raise
        return response["Body"].read().decode(errors="replace"), response["ETag"]

    def replace(self, body: str, version: str) -> str | None:
        return self._put(body, IfMatch=version)

    def clear(self, version: str, released_body: str) -> bool:
        return self._put(released_body, IfMatch=version) is not None


def _backend(location: str, s3=None):
    if location.startswith(("s3://", "s3a://")):
        return _S3Backend(location, s3)
    if "://" in location and not location.startswith("file://"):
        raise ValueError(f"no lease backend for {location}: the output must be on s3:// or a local path")
    return _LocalBackend(location)


def _retrying(call, *args):
    for attempt in range(CONFLICT_RETRIES):
        try:
            return call(*args)
        except _Conflict:
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"S3 answered 409 ConditionalRequestConflict {CONFLICT_RETRIES} times in a row")


# -- the lease ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """A day's lease, held by this run. ``as_dict``/``from_dict`` carry it from the task that took it to the
    one that releases it (an Airflow XCom)."""

    output: str
    dt: str
    holder: str
    host: str
    pid: int
    since: str
    expires: str
    token: str
    process_bound: bool
    location: str
    version: str
    taken_over: str | None = None
    _backend: Any = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        keys = ("output", "dt", "holder", "host", "pid", "since", "expires", "token", "process_bound")
        return {key: getattr(self, key) for key in keys}

    def as_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it would deep-copy the backend's S3 client
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "_backend"}

    @classmethod
    def from_dict(cls, values: dict[str, Any], s3=None) -> Lease:
        return cls(**values, _backend=_backend(values["location"], s3))

    def release(self) -> bool:
        """Gives the day back, if this run still holds it: True if released. A lease someone else holds now
        (this one expired and was taken over) is left alone, with a warning naming them."""
        backend = self._backend or _backend(self.location)
        found = _retrying(backend.read)
        record = _parse(found[0]) if found else None
        if found is None or (record or {}).get("released"):
            log.warning("lease %s was already released", self.location)
            return False
        if (record or {}).get("token") != self.token:
            log.warning(
                "lease %s not released: it is now held by %s since %s",
                self.location,
                describe(record or {}),
                (record or {}).get("since"),
            )
            return False
        released = json.dumps({**self.record(), "released": _iso(_now())}, indent=1)
        if _retrying(backend.clear, found[1], released):
            return True
        log.warning("lease %s not released: it changed while being released", self.location)
        return False

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(
    output_uri: str,
    dt: str,
    holder: str,
    *,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    wait_seconds: float = 0.0,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    retake: bool = False,
    process_bound: bool = False,
    s3=None,
) -> Lease:
    """Takes the lease on ``dt`` of ``output_uri`` (``s3://bucket/prefix`` or a local path) for ``holder``
    (who the run is: unique per run, e.g. ``<dag_id>/<run_id>``), valid ``ttl_seconds``.

    Held by another run: waits up to ``wait_seconds`` (polling), then raises ``LeaseHeld`` naming it. An
    expired lease, a process-bound one whose process is gone from this host, and with ``retake`` one of the
    same ``holder`` (an earlier try of this run) are taken over, with a warning saying whose and why.
    ``s3``: the S3 client to use (default: boto3's)."""
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    location = lease_location(output_uri, dt)
    backend = _backend(location, s3)
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    while True:
        since = _now()
        lease = Lease(
            output=str(output_uri),
            dt=dt,
            holder=holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=_iso(since),
            expires=_iso(since + timedelta(seconds=ttl_seconds)),
            token=uuid.uuid4().hex,
            process_bound=process_bound,
            location=location,
            version="",
            _backend=backend,
        )
        body = json.dumps(lease.record(), indent=1)
        version = _retrying(backend.create, body)
        if version:
            return _with(lease, version=version)
        found = _retrying(backend.read)
        if found is None:
            continue  # released between the two calls: try again
        text, current = found
        record = _parse(text)
        reason = stale_reason(record, holder, retake)
        if reason is not None:
            version = _retrying(backend.replace, body, current)
            if version is None:
                continue  # another run changed it first: look again
            message = None
            if reason:
                message = f"took over the lease on dt={dt} of {output_uri} from {describe(record or {})}"
                message += f", since {(record or {}).get('since')}: {reason}"
                log.warning(message)
            return _with(lease, version=version, taken_over=message)
        if time.monotonic() >= deadline:
            raise LeaseHeld(record or {}, location)
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.01)))


def _with(lease: Lease, **changes) -> Lease:
    values = {**lease.as_dict(), **changes}
    return Lease(**values, _backend=lease._backend)


@contextlib.contextmanager
def holding(
    output_uri: str,
    dt: str,
    holder: str,
    *,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    wait_seconds: float = 0.0,
    s3=None,
) -> Iterator[Lease]:
    """The day's lease for the duration of a block run by this process (``fruits run-local``, the local DAG's
    task): released when the block ends, however it ends; stale at once if this process dies."""
    lease = acquire(
        output_uri, dt, holder, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, process_bound=True, s3=s3
    )
    try:
        yield lease
    finally:
        lease.release()


__all__ = [
    "DEFAULT_TTL_SECONDS",
    "Lease",
    "LeaseHeld",
    "acquire",
    "holding",
    "lease_location",
]
