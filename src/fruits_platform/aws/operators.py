"""The EMR DAG's three operator subclasses: an idempotent cluster creation (adoption on retry), a teardown
that accepts a cluster already ended with errors, and a step sensor whose failure names the step and its log.

The cluster they create and the steps they watch are data from ``aws.cluster``.
"""

from __future__ import annotations

import ast
import gzip
import math
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.operators.emr import EmrCreateJobFlowOperator, EmrTerminateJobFlowOperator
from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from fruits_platform.aws.cluster import (
    ACTIVE_CLUSTER_STATES,
    CLUSTER_NAME_PREFIX,
    ENDED_CLUSTER_STATES,
    normalise_log_uri,
    s3_scheme,
    step_log_uri,
)
from fruits_platform.pipeline import failure_reason
from fruits_spark.contract import STEP_NAMES


def find_run_cluster(emr, dag_id: str, run_id: str) -> str | None:
    """The still-active cluster an earlier try of this run created, found by its dag_id/run_id tags."""
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=list(ACTIVE_CLUSTER_STATES)):
        for summary in page.get("Clusters", []):
            if not summary.get("Name", "").startswith(CLUSTER_NAME_PREFIX):
                continue
            cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            tags = {tag["Key"]: tag["Value"] for tag in cluster.get("Tags", [])}
            if tags.get("dag_id") == dag_id and tags.get("run_id") == run_id:
                return summary["Id"]
    return None


class FruitsCreateJobFlowOperator(EmrCreateJobFlowOperator):
    """``EmrCreateJobFlowOperator`` that never leaves two clusters for one run.

    EMR's RunJobFlow has no idempotency token: a retried create task (worker lost after the call, a
    failure after creation) would start a second cluster. Before creating, this looks for an active
    cluster tagged with this DAG run's id and adopts it.
    """

    adopted_cluster_id: str | None = None

    def execute(self, context) -> str | None:
        run_id = context["run_id"]
        existing = find_run_cluster(self.hook.conn, self.dag_id, run_id)
        if existing:
            self.log.warning("Adopting cluster %s, created for run %s by an earlier try", existing, run_id)
            # kept on this subclass (on_kill below), not in the provider's private state
            self.adopted_cluster_id = existing
            return existing
        return super().execute(context)

    def on_kill(self) -> None:
        if self.adopted_cluster_id:
            self.log.info("Terminating adopted cluster %s", self.adopted_cluster_id)
            self.hook.conn.terminate_job_flows(JobFlowIds=[self.adopted_cluster_id])
            return
        super().on_kill()


class FruitsTerminateJobFlowOperator(EmrTerminateJobFlowOperator):
    """``EmrTerminateJobFlowOperator`` whose deferred wait accepts a cluster that ended with errors.

    The provider's trigger waits with the ``job_flow_terminated`` waiter, whose acceptors make
    TERMINATED_WITH_ERRORS a terminal *failure*: in deferrable mode every failed run (a failed step ends
    the cluster that way) would also fail its teardown. Whatever the trigger reports, this asks EMR for the
    cluster's state: ended (either way) is what terminating wanted; anything else still fails the task.
    """

    def execute_complete(self, context, event: dict[str, Any] | None = None) -> None:
        if event and event.get("status") == "success":
            self.log.info("Cluster %s terminated", self.job_flow_id)
            return
        status = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]["Status"]
        state = status["State"]
        if state in ENDED_CLUSTER_STATES:
            change = status.get("StateChangeReason") or {}
            self.log.info(
                "Cluster %s is %s (%s): terminated, as intended",
                self.job_flow_id,
                state,
                " ".join(filter(None, [change.get("Code"), change.get("Message")])) or "no reason given",
            )
            return
        raise AirflowException(f"cluster {self.job_flow_id} is still {state} after termination: {event}")


class FruitsStepSensor(EmrStepSensor):
    """``EmrStepSensor`` for one named step of the run, with a timeout sized at run time.

    ``step_ids`` is ``EmrAddStepsOperator``'s XCom (one id per name in ``STEP_NAMES``);
    ``timeout_seconds`` comes from the cost guard (sized from the image count). A failed step fails the
    task without retry, with one line naming the step, the reason and the step's log in S3; the same
    facts go to the XCom key ``failure`` for the run summary.
    """

    template_fields: Sequence[str] = (*EmrStepSensor.template_fields, "step_ids", "timeout_seconds")

    def __init__(
        self,
        *,
        step_name: str,
        step_ids: Any,
        timeout_seconds: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(step_id="", **kwargs)
        if step_name not in STEP_NAMES:
            raise ValueError(f"unknown step {step_name!r}; steps are {STEP_NAMES}")
        self.step_name = step_name
        self.step_ids = step_ids
        self.timeout_seconds = timeout_seconds

    def _resolve_step(self) -> None:
        ids = ast.literal_eval(self.step_ids) if isinstance(self.step_ids, str) else list(self.step_ids)
        self.step_id = ids[STEP_NAMES.index(self.step_name)]
        if self.timeout_seconds not in (None, ""):
            self.timeout = float(self.timeout_seconds)
            self.max_attempts = max(1, math.ceil(self.timeout / self.poke_interval))

    def execute(self, context) -> None:
        self._resolve_step()
        self.log.info("Watching step %s (%s), timeout %.0f s", self.step_name, self.step_id, self.timeout)
        return super().execute(context)

    def poke(self, context) -> bool:
        response = self.get_emr_response(context=context)
        state = response["Step"]["Status"]["State"]
        self.log.info("Step %s (%s) is %s", self.step_name, self.step_id, state)
        if state in self.target_states:
            return True
        if state in self.failed_states:
            self._fail(context, response)
        return False

    def execute_complete(self, context, event: dict[str, Any] | None = None) -> None:
        self._resolve_step()
        if event and event.get("status") == "success":
            self.log.info("Step %s completed", self.step_name)
            return
        self._fail(context, self.hook.conn.describe_step(ClusterId=self.job_flow_id, StepId=self.step_id))

    def _fail(self, context, response: dict[str, Any]) -> None:
        failure = self.describe_failure(response)
        context["ti"].xcom_push(key="failure", value=failure)
        raise AirflowFailException(failure["message"])

    def describe_failure(self, response: dict[str, Any]) -> dict[str, str]:
        status = response["Step"]["Status"]
        state = status["State"]
        cluster = self.hook.conn.describe_cluster(ClusterId=self.job_flow_id)["Cluster"]
        details = status.get("FailureDetails") or {}
        log = details.get("LogFile") or step_log_uri(cluster.get("LogUri"), self.job_flow_id, self.step_id)
        log = s3_scheme(log)
        reason = details.get("Message") or details.get("Reason") or self._reason_from_log(log)
        if state == "CANCELLED" or not reason:
            cluster_status = cluster.get("Status", {})
            change = cluster_status.get("StateChangeReason", {})
            cluster_reason = " ".join(filter(None, [change.get("Code"), change.get("Message")]))
            reason = reason or f"cluster {cluster_status.get('State')}" + (
                f" ({cluster_reason})" if cluster_reason else ""
            )
        if state == "CANCELLED":
            # the step never ran: the cluster's own logs (bootstrap, nodes) say why
            log = f"{normalise_log_uri(cluster.get('LogUri'))}{self.job_flow_id}/"
        message = f"step {self.step_name} {state} on cluster {self.job_flow_id}: {reason}; log: {log}"
        return {"step": self.step_name, "state": state, "reason": reason, "log": log, "message": message}

    def _reason_from_log(self, log: str) -> str | None:
        """The explaining line of the step's stderr, when EMR has pushed it to S3 already (best effort)."""
        try:
            bucket, _, key = log.removeprefix("s3://").partition("/")
            s3 = self.hook.get_session(region_name=self.hook.conn_region_name).client("s3")
            text = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).decode(
                errors="replace"
            )
        except Exception as error:  # logs reach S3 a few minutes late: the location is enough then
            self.log.info("Step log not readable yet (%s)", error)
            return None
        return failure_reason(self.step_name, text)
