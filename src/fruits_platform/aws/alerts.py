"""A failed EMR run, or one that rejected too many images, tells someone: a message on the SNS topic the
infra stack creates (output ``AlertsTopicArn``), through the Amazon provider's ``SnsNotifier``.

The topic comes from the Variable ``fruits_alerts_topic_arn``: without it nothing is sent and nothing fails
(a team that has not subscribed anyone yet still gets its runs). The message names the DAG run, the failed
task and its reason, the cost so far and where to look (the task's log, the run's report).
"""

from __future__ import annotations

import logging

from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

from fruits_platform.links import REPORT_URL_KEY

VAR_ALERTS_TOPIC = "fruits_alerts_topic_arn"
# a run whose rejections exceed this share of the files seen is reported even though it succeeded
REJECTED_SHARE_ALERT = 0.10

log = logging.getLogger(__name__)


def topic_region(topic_arn: str) -> str:
    """arn:aws:sns:<region>:<account>:<name> -> region: the topic is published to in its own region."""
    parts = topic_arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", "aws", "sns"]:
        raise ValueError(f"Variable {VAR_ALERTS_TOPIC} is not an SNS topic ARN: {topic_arn!r}")
    return parts[3]


def too_many_rejections(counts: dict | None, share: float = REJECTED_SHARE_ALERT) -> str | None:
    """Why a successful run's rejections deserve a message, or None."""
    if not counts or not counts.get("files_seen"):
        return None
    rejected = counts.get("rejected", 0)
    if rejected / counts["files_seen"] <= share:
        return None
    return f"{rejected} of {counts['files_seen']} files rejected (more than {share:.0%})"


def _cost_line(summary: dict | None) -> str:
    if not summary:
        return "cost so far: no cluster cost recorded (the run stopped before its cluster, or it is unknown)"
    cost = summary["cost"]
    return (
        f"cost so far: ~{cost['estimated_cost_eur']:.2f} EUR for {cost['cluster_hours']:.2f} cluster hours "
        f"(cluster {summary.get('cluster_id')}, budget {cost['budget_eur']:g} EUR)"
    )


def message(run_id: str, dag_id: str, what: str, summary: dict | None, links: dict[str, str | None]) -> str:
    lines = [f"{dag_id} run {run_id}: {what}", _cost_line(summary)]
    lines += [f"{name}: {url}" for name, url in links.items() if url]
    return "\n".join(lines)


def _pull(ti, **kwargs):
    """An XCom of the run, None when absent or unreadable: a message with less beats no message."""
    try:
        return ti.xcom_pull(**kwargs)
    except Exception as error:
        log.warning("XCom %s not read for the alert: %s", kwargs, error)
        return None


def failure_message(context, summary_task: str, report_task: str) -> str:
    """What a DAG failure callback's context says: the run, the task that failed and why, cost, links."""
    ti = context.get("ti")
    run_id = context.get("run_id") or context["dag_run"].run_id
    dag_id = context["dag"].dag_id
    if ti is None:
        return message(run_id, dag_id, f"FAILED ({context.get('reason')})", None, {})
    failure = _pull(ti, task_ids=ti.task_id, key="failure") or {}
    reason = failure.get("message") or context.get("reason")
    summary = _pull(ti, task_ids=summary_task)
    report = _pull(ti, task_ids=report_task, key=REPORT_URL_KEY)
    links = {"task log": getattr(ti, "log_url", None), "step log": failure.get("log"), "report": report}
    return message(run_id, dag_id, f"task {ti.task_id} FAILED: {reason}", summary, links)


class FruitsSnsNotifier(SnsNotifier):
    """``SnsNotifier`` to the topic of the Variable ``fruits_alerts_topic_arn``; without it, a no-op.

    ``message`` may be given (a rejection alert) or is built from a DAG failure callback's context."""

    def __init__(
        self,
        *,
        aws_conn_id: str,
        summary_task: str = "report_cost",
        report_task: str = "resolve_run",
        message: str = "",
        subject: str = "",
        **kw,
    ):
        super().__init__(
            aws_conn_id=aws_conn_id,
            target_arn="{{ var.value.get('" + VAR_ALERTS_TOPIC + "', '') }}",
            message=message,
            subject=subject or None,
            **kw,
        )
        # the tasks whose XComs the failure message reads: the run summary (cost), the report's address
        self.summary_task = summary_task
        self.report_task = report_task

    def render_template_fields(self, context, jinja_env=None) -> None:
        # dag.test() hands DAG callbacks the serialized DAG, which has no template environment of its own
        if jinja_env is None and not hasattr(context.get("dag"), "get_template_env"):
            jinja_env = self.get_template_env()
        super().render_template_fields(context, jinja_env)

    def notify(self, context) -> None:
        topic = (self.target_arn or "").strip()
        if not topic:
            log.info("Variable %s is not set: no notification sent", VAR_ALERTS_TOPIC)
            return
        self.region_name = self.region_name or topic_region(topic)
        self.target_arn = topic
        if not self.message:
            self.message = failure_message(context, self.summary_task, self.report_task)
        self.subject = self.subject or f"[fruits] {context['dag'].dag_id} failed"[:100]
        log.info("notifying %s: %s", topic, self.message.splitlines()[0])
        super().notify(context)
