"""Plays EMR's step runner against moto: the steps the DAG adds really run, with spark-submit in local mode.

moto stores EMR steps but never runs them. ``EmrStepRunner`` (a background thread, started by a test
inside ``mock_aws``) takes each step of an active moto cluster in order, like a cluster with
StepConcurrencyLevel 1:

* checks it is a ``command-runner.jar`` ``spark-submit`` step;
* maps every ``s3://bucket/key`` argument to ``<workdir>/s3/bucket/key`` and downloads those objects
  (or prefixes) from moto S3: the code, the weights, the input, and the current outputs;
* runs the command with this venv's spark-submit, ``--master local[2]`` instead of YARN (``--deploy-mode``
  dropped), with the local Spark settings; or, with ``in_process=True``, runs the submitted entry script
  with the same arguments on the test session's SparkSession (``tests.inprocess.run_script``: no JVM
  start per step, no ``timeout``);
* syncs the ``--output`` folder back to moto S3 (new and changed files up, deleted files removed), writes
  the step's output to ``<LogUri><cluster>/steps/<step>/stderr.gz`` like EMR does;
* sets the moto step COMPLETED or FAILED; on failure with ActionOnFailure TERMINATE_CLUSTER, the later
  steps become CANCELLED and the cluster TERMINATED_WITH_ERRORS, as on EMR.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.emr.models import emr_backends

from fruits_platform.aws.cluster import normalise_log_uri
from fruits_platform.local.runner import spark_submit_binary
from fruits_platform.local.spark_settings import local_conf, spark_env
from tests.inprocess import run_script

ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
# small, so that several test runs fit on a 2-core machine next to each other
SMALL = {"spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "4"}


@dataclass
class StepRun:
    cluster_id: str
    step_id: str
    name: str
    returncode: int
    log: Path


class EmrStepRunner:
    def __init__(
        self,
        workdir: Path,
        region: str = "eu-west-3",
        account_id: str = DEFAULT_ACCOUNT_ID,
        poll_seconds: float = 0.3,
        credentials: dict[str, str] | None = None,
        in_process: bool = False,
    ) -> None:
        self.workdir = workdir
        self.in_process = in_process
        self.region = region
        self.account_id = account_id
        self.poll_seconds = poll_seconds
        self.runs: list[StepRun] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emr-step-runner", daemon=True)
        # the nodes' identity (the instance profile): tests under IAM enforcement pass its access key
        self._s3 = boto3.client("s3", region_name=region, **(credentials or {}))

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> EmrStepRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=600)
        if self.error and not exc[0]:
            raise RuntimeError(f"the EMR step runner crashed: {self.error!r}") from self.error

    def backends(self) -> list:
        """The moto EMR backends whose clusters this runner plays: its Region's."""
        return [emr_backends[self.account_id][self.region]]

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                step = self._next_step()
                if step is None:
                    time.sleep(self.poll_seconds)
                else:
                    self._run(*step)
        except BaseException as error:  # surfaced by __exit__
            self.error = error

    def _next_step(self):
        for backend in self.backends():
            for cluster in list(backend.clusters.values()):
                if cluster.state not in ACTIVE_STATES:
                    continue
                for step in cluster.steps:
                    if step.state in ("PENDING", "RUNNING"):
                        return cluster, step
        return None

    # -- one step ----------------------------------------------------------------------------------------
    def local_path(self, uri: str) -> str:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        path = self.workdir / "s3" / bucket / key
        return str(path) + ("/" if uri.endswith("/") else "")

    def _download(self, uri: str) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        target = Path(self.local_path(uri))
        try:
            self._s3.head_object(Bucket=bucket, Key=key)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(bucket, key, str(target))
            return
        except self._s3.exceptions.ClientError:
            pass
        prefix = key if key.endswith("/") or not key else key + "/"
        shutil.rmtree(target, ignore_errors=True)
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                local = self.workdir / "s3" / bucket / item["Key"]
                local.parent.mkdir(parents=True, exist_ok=True)
                self._s3.download_file(bucket, item["Key"], str(local))

    def _sync_up(self, uri: str) -> None:
        """Makes ``uri`` (a prefix) hold exactly the local folder's files, as the job left them."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        prefix = key if key.endswith("/") else key + "/"
        root = Path(self.local_path(uri))
        local = {
            prefix + p.relative_to(root).as_posix(): p
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".crc")  # Hadoop's local checksums: EMRFS writes none
        }
        remote = {
            item["Key"]
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        }
        for key_name, path in local.items():
            # EMRFS with fs.s3.enableServerSideEncryption writes SSE-S3 objects
            self._s3.upload_file(str(path), bucket, key_name, ExtraArgs={"ServerSideEncryption": "AES256"})
        for stale in remote - set(local):
            self._s3.delete_object(Bucket=bucket, Key=stale)

    @staticmethod
    def strip_timeout(args: list[str]) -> tuple[float | None, list[str]]:
        """(seconds, the command) of a ``timeout [--kill-after=N] <seconds>s <command...>`` step."""
        if not args or args[0] != "timeout":
            return None, args
        i = 1
        while args[i].startswith("--"):
            i += 1
        return float(args[i].rstrip("s")), args[i + 1 :]

    def command(self, args: list[str]) -> tuple[list[str], str | None]:
        """(the local spark-submit command, the s3 --output URI) for an EMR step's arguments."""
        args = self.strip_timeout(args)[1]
        if not args or args[0] != "spark-submit":
            raise ValueError(f"not a spark-submit step: {args[:3]}")
        rest, output, i = [], None, 1
        while i < len(args):
            if args[i] == "--deploy-mode":
                i += 2
                continue
            if args[i] == "--output" and i + 1 < len(args):
                output = args[i + 1]
            rest.append(args[i])
            i += 1
        local = [self.local_path(a) if a.startswith("s3://") else a for a in rest]
        conf = [item for key, value in local_conf(SMALL).items() for item in ("--conf", f"{key}={value}")]
        return [spark_submit_binary(), "--master", "local[2]", *conf, *local], output

    def _run(self, cluster, step) -> None:
        step.state = "RUNNING"
        step.start()
        log = self.workdir / "logs" / cluster.id / step.id / "stderr"
        log.parent.mkdir(parents=True, exist_ok=True)
        returncode = 1
        with log.open("w") as handle:
            try:
                if step.jar != "command-runner.jar":
                    raise ValueError(f"unsupported jar {step.jar}")
                command, output = self.command(list(step.args))
                for uri in {a for a in step.args if a.startswith("s3://")}:
                    self._download(uri)
                handle.write(" ".join(command) + "\n")
                handle.flush()
                if self.in_process:
                    returncode = run_script(*self.application(command), handle)
                else:
                    returncode = self._submit(command, step, handle)
                if returncode == 0 and output:
                    self._sync_up(output)
            except Exception as error:
                handle.write(f"emr_runner: {type(error).__name__}: {error}\n")
                returncode = returncode or 1
        self._finish(cluster, step, log, returncode)

    @staticmethod
    def application(command: list[str]) -> tuple[str, list[str]]:
        """(the application script, its arguments) of a spark-submit command, as spark-submit reads it:
        every option before the script takes one value."""
        i = 1
        while command[i].startswith("--"):
            i += 2
        return command[i], command[i + 1 :]

    def _submit(self, command: list[str], step, handle) -> int:
        try:
            return subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=spark_env(),
                check=False,
                cwd=self.workdir,
                timeout=self.strip_timeout(list(step.args))[0],  # what `timeout` does on EMR
            ).returncode
        except subprocess.TimeoutExpired:
            return 124

    def _finish(self, cluster, step, log: Path, returncode: int) -> None:
        self._push_log(cluster, step, log)
        now = dt.datetime.now(dt.UTC)
        step.end_date_time = now
        self.runs.append(StepRun(cluster.id, step.id, step.name, returncode, log))
        if returncode == 0:
            step.state = "COMPLETED"
            return
        step.state = "FAILED"
        if step.action_on_failure in ("TERMINATE_CLUSTER", "TERMINATE_JOB_FLOW"):
            for later in cluster.steps:
                if later.state in ("PENDING", "RUNNING"):
                    later.state = "CANCELLED"
            cluster.last_state_change_reason = f"Shut down as step failed: {step.name}"
            cluster.state = "TERMINATED_WITH_ERRORS"
            cluster.end_datetime = now

    def _push_log(self, cluster, step, log: Path) -> None:
        base = normalise_log_uri(cluster.log_uri)
        if not base:
            return
        bucket, _, prefix = base.removeprefix("s3://").partition("/")
        self._s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}{cluster.id}/steps/{step.id}/stderr.gz",
            Body=gzip.compress(log.read_bytes()),
        )
