"""
### fruits_features_emr: the feature pipeline on a transient EMR cluster

The same three Spark steps as `fruits_features_local` (**ingest** → **features** → **pca**, defined once in
`fruits_platform.pipeline`), submitted as EMR steps to a cluster created for this run and terminated after it.

Daily at 02:00 UTC over the day before's uploads, `uploads/dt=YYYY-MM-DD/`; a manual run: the UTC day of its
logical date (`fruits_platform.run_date`). Assets, the Report link, alerts: docs/AWS.md, *Downstream DAGs*.

| task | what it does |
| --- | --- |
| `resolve_run` | reads the params and Variables once (roles, subnet required; refuses an unwritable output) |
| `check_gdpr` | EU region, bucket in it and encrypted, subnet tagged for EMR, private, with an S3 endpoint |
| `check_budget` | counts the images, bounds the cost from the run's enforced limits, refuses > `budget_eur` |
| `stage_artifacts` | code, bootstrap, the nodes' wheelhouse and weights to `s3://<bucket>/artifacts/` (SSE) |
| `cluster_spec` | the cluster definition and its EMR steps, from the staged artifacts |
| `take_lease` | the day's lease, `<output>/_leases/dt=D.json`; if another run holds it, fails at once |
| `create_cluster` | the run's cluster (reuses the one an earlier try created) |
| `add_steps` | ingest, features, pca as `spark-submit` steps |
| `watch_<step>` | waits for one step; a failure names the step and its log |
| `terminate_cluster` | teardown: always terminates the cluster (TERMINATED_WITH_ERRORS counts as ended) |
| `report_cost` | teardown: cluster hours and estimated cost, the run summary (XCom) |
| `release_lease` | teardown: gives the day back, even if the run failed (not while its cluster still runs) |

Params: `bucket` (empty: Variable `fruits_bucket`), `input` (a prefix of the bucket; empty: the day's
uploads), `output` (a prefix), then the pipeline's `weights` (`imagenet`, `s3://...` or a path on the
worker), `k`, `input_size`, `refit`, `engine` and `recompute` (the same contract as
`fruits run-local`), and the cluster's
`instance_type`, `core_nodes`, `use_spot`, `region` and `budget_eur`.
A range of days on one cluster: `fruits_features_emr_backfill`.
Set up, costs and failure modes: `docs/AWS.md`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, chain, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from fruits_platform import assets, links, run_date
from fruits_platform.aws import alerts, cluster, cost, cost_report, operators, pricing, shapes, staging
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.aws.run_outputs import publish_run, report_url
from fruits_platform.aws.settings import RunSettings, resolve_settings
from fruits_platform.aws.tasks import (
    DEFERRABLE,
    REGION,
    aws_client,
    check_placement,
    cluster_tasks,
    lease_tasks,
    poke_seconds,
    sensor_mode,
    stage_run,
    variables,
)
from fruits_platform.dag_params import emr_params, refuse_unknown_keys
from fruits_spark.contract import STEP_NAMES

DAG_ID = "fruits_features_emr"
AWS_CONN_ID: str = cluster.AWS_CONN_ID
POKE_SECONDS: float = poke_seconds()
SCHEDULE = run_date.SCHEDULE
PARAMS = emr_params()

with DAG(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["fruits", "emr"],
    default_args={"owner": "fruits", "retries": 0},
    on_failure_callback=alerts.FruitsSnsNotifier(aws_conn_id=AWS_CONN_ID),
) as dag:

    @task
    def resolve_run() -> dict:
        """Reads the params and Variables once; a param that cannot work refuses the run, without retry."""
        context = get_current_context()
        try:
            refuse_unknown_keys(context["dag_run"].conf, PARAMS)
            run = resolve_settings(context["params"], run_date.of_context(context), variables())
        except (GuardRefused, ValueError) as refusal:
            raise AirflowFailException(str(refusal)) from None
        print(f"run of dt={run.dt}: {run.input_uri} -> {run.output_uri}, {run.pipeline}")
        context["ti"].xcom_push(key=links.REPORT_URL_KEY, value=report_url(run))
        return run.as_dict()

    @task
    def check_gdpr(settings: dict) -> str:
        """Placement guard, before anything is created: EU region, bucket in it and encrypted, a private
        subnet EMR can launch in that reaches S3 through a gateway endpoint."""
        return check_placement(RunSettings.from_dict(settings))

    @task(multiple_outputs=True)
    def check_budget(settings: dict) -> dict:
        """Cost guard: a bound from the limits the run enforces (cost.CostEstimate), against budget_eur."""
        run = RunSettings.from_dict(settings)
        objects, images, image_bytes = staging.count_images(
            aws_client("s3", run.region), run.bucket, run.input_prefix
        )
        if not images:
            raise AirflowSkipException(f"no images under {run.input_uri} ({objects} objects): no cluster")
        try:
            table = pricing.load_price_table(run.price_table)
            # the cheapest shape that meets the night, or the one the params pin (aws.shapes)
            choice = shapes.choose_for_run(run, table, images, image_bytes)
            estimate, shape = choice.estimate, choice.shape
            sizing = cluster.executor_sizing(
                table, shape.instance_type, shape.core_nodes, run.pipeline["engine"]
            )
            print(f"{images} images, {image_bytes / 1e9:.2f} GB ({objects} objects); {choice.summary()}")
            print(estimate.summary())
            print(f"executors: {sizing.as_dict()}")
            cost.check_budget(estimate)
        except (GuardRefused, pricing.PriceTableError, ValueError) as refusal:
            raise AirflowFailException(str(refusal)) from None
        timeouts = cost.sensor_timeouts(estimate.step_limits)
        return {
            "images": images,
            "image_bytes": image_bytes,
            "objects": objects,
            # report_cost says what was chosen and why, from the estimate it gets
            "estimate": {**estimate.as_dict(), "cluster_choice": choice.as_dict()},
            "shape": shape.as_dict(),
            "step_limits": estimate.step_limits,
            **{f"sensor_timeout_{name}": seconds for name, seconds in timeouts.items()},
        }

    @task(retries=2, retry_delay=dt.timedelta(seconds=30))
    def stage_artifacts(settings: dict, shape: dict) -> dict:
        """Code, bootstrap, the wheelhouse for the nodes' architecture and weights to S3, once per content."""
        return stage_run(shapes.resolved(RunSettings.from_dict(settings), shape))

    @task(multiple_outputs=True)
    def cluster_spec(settings: dict, staged: dict, step_limits: dict, shape: dict) -> dict:
        """The cluster definition and its steps: the pipeline's steps over the staged code and weights, each
        bounded on the cluster by its limit from the cost guard."""
        run = shapes.resolved(RunSettings.from_dict(settings), shape)  # the shape check_budget chose
        artifacts = staging.StagedArtifacts(**staged)
        table = pricing.load_price_table(run.price_table)
        # the steps read the staged copies: weights, and the exported model that spares the nodes TensorFlow
        pipeline = {
            **run.pipeline,
            "weights": artifacts.weights_uri,
            "engine_artifact": artifacts.engine_artifact_uri,
        }
        return {
            "job_flow_overrides": cluster.cluster_definition(
                run, artifacts, table, DAG_ID, get_current_context()["run_id"]
            ),
            "steps": cluster.emr_steps(pipeline, artifacts.artifacts_uri, step_limits),
        }

    @task(outlets=[assets.FEATURES, assets.PCA])
    def report_cost(settings: dict, estimate: dict, cluster_id: str) -> dict:
        """Run summary: outcome, cluster hours priced like the estimate, cost in the report; asset events."""
        run = RunSettings.from_dict(settings)
        ended = cost_report.wait_for_termination(aws_client("emr", run.region), cluster_id, POKE_SECONDS)
        context = get_current_context()
        ti = context["ti"]
        # the watchers' states, not only their failure XComs: a timed-out sensor or a task marked failed by
        # hand pushes no XCom, and must not be reported as a success
        watchers = cost_report.watchers()
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=watchers, run_ids=[ti.run_id]).get(
            ti.run_id, {}
        )
        failures = ti.xcom_pull(task_ids=watchers, key="failure") or []
        summary = cost_report.summarize_run(run, estimate, cluster_id, ended, states, failures)
        cost_report.publish(aws_client("s3", run.region), run, summary)
        print(cost_report.outcome_line(summary, estimate))
        publish_run(context, run, summary, aws_client("s3", run.region), AWS_CONN_ID)
        if summary["cluster_state"] in cluster.ACTIVE_CLUSTER_STATES:
            raise AirflowFailException(
                f"cluster {cluster_id} is still {summary['cluster_state']} after terminate_cluster: "
                f"terminate it (aws emr terminate-clusters --cluster-ids {cluster_id}); auto-termination "
                f"ends it after {cluster.IDLE_TIMEOUT_SECONDS} s idle"
            )
        return summary

    settings = resolve_run()
    placement = check_gdpr(settings)
    plan = check_budget(settings)
    staged = stage_artifacts(settings, plan["shape"])
    spec = cluster_spec(settings, staged, plan["step_limits"], plan["shape"])
    # taken as late as it can be, just before the cluster: nothing before writes under the output (staging
    # is content-addressed, shared by every run), and its expiry counts from the cluster's bounded life
    take_lease, release_lease = lease_tasks(settings, plan["estimate"])

    create_cluster, add_steps, terminate_cluster = cluster_tasks(spec)
    watchers = [
        operators.FruitsStepSensor(
            task_id=cost_report.watcher_id(name),
            job_flow_id=create_cluster.output,
            step_ids=add_steps.output,
            step_name=name,
            timeout_seconds=plan[f"sensor_timeout_{name}"],
            poke_interval=POKE_SECONDS,
            mode="poke" if DEFERRABLE else sensor_mode(POKE_SECONDS),
            deferrable=DEFERRABLE,
            # one retry, for Airflow's own race: a deferred task whose trigger fires within seconds is failed
            # by the stale executor event of its deferring try (apache/airflow#67287, #72716; seen in the AWS
            # rehearsal). A failed step or a timeout still fails at once, without retry
            retries=1,
            retry_delay=dt.timedelta(seconds=5),
            aws_conn_id=AWS_CONN_ID,
            region_name=REGION,
        )
        for name in STEP_NAMES
    ]
    summary = links.with_report_link(report_cost(settings, plan["estimate"], create_cluster.output))

    chain(
        settings,
        placement,
        plan,
        staged,
        spec,
        take_lease,
        create_cluster,
        add_steps,
        *watchers,
        # teardowns: run once the work is done, failed or marked failed, whenever the cluster was created.
        # The run's state follows watch_pca and report_cost (which fails if the cluster is left running);
        # on_failure_fail_dagrun on terminate_cluster would make it the only leaf, hiding step failures.
        terminate_cluster.as_teardown(setups=create_cluster),
        summary.as_teardown(setups=create_cluster, on_failure_fail_dagrun=True),
        # last: the day is given back once report_cost has published, whether the run failed or not
        release_lease.as_teardown(setups=take_lease, on_failure_fail_dagrun=True),
    )
