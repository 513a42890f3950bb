"""
### fruits_features_local: the feature pipeline on this machine (Spark local mode)

The same plan as `fruits_features_emr` (**ingest** → **features** → **pca**, then **publish**, which
publishes the day and writes its report), run by the task `spark_steps` in one spark-submit of its own
(`--master local[*]` on the Airflow worker, each step's own `main()` with the arguments EMR gives it), which
ends with the task: one JVM start-up instead of four, what `fruits run-local` runs too. No AWS account
needed. Use it to develop, to demo, and to try params before
paying for a cluster.

Trigger it from the UI ("Trigger" → the form below) with:

| param | meaning |
| --- | --- |
| `input` | folder of images, one sub-folder per label |
| `output` | output folder: `images/`, `features/`, `pca/`, `pca_csv/`, `rejected/`, `report.json` |
| `weights` | `imagenet` (download) or the path of a MobileNetV2 `.weights.h5` file |
| `k` | PCA components (1..1280) |
| `input_size` | model input side in pixels (96..224) |
| `refit` | fit a new PCA model version instead of applying the current one |
| `engine` | `onnx` (ONNX Runtime, the default) or `tensorflow` (the Keras reference) |
| `recompute` | run the CNN on every image instead of reusing features of photos already seen |
| `dt` | upload date (YYYY-MM-DD) of the batch; empty = the run's date |

Each successful run adds an event per day to the Assets `fruits_features` and `fruits_pca`
(`file://<output>/features`, `.../pca`); the task `summarize` links the run's report ("Report").

The Spark log is written to `<output>/_logs/dt=<dt>/pipeline.log`; the task log shows each step's lines
and the features step's progress. The params, their bounds and
their help are the pipeline contract's (`fruits_spark.contract`), the same as `fruits run-local --help`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.sdk import DAG, chain, get_current_context, task

from fruits_platform import assets, links, run_date
from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.forms import pipeline_params, refuse_unknown_keys
from fruits_platform.pipeline import PipelineParams, default_weights
from fruits_spark.layout import REPORT_HTML, Layout

DAG_ID = "fruits_features_local"
# empty: sized to the worker's machine (fruits_platform.local.spark_settings.sized)
SPARK_MASTER: str | None = os.environ.get("FRUITS_SPARK_MASTER") or None

# every run param of the contract (a registered step's too), with this machine's defaults
PARAMS = pipeline_params(
    {
        "input": {"default": os.environ.get("FRUITS_LOCAL_INPUT", str(PROJECT_ROOT / "data" / "sample"))},
        "output": {"default": os.environ.get("FRUITS_LOCAL_OUTPUT", str(PROJECT_ROOT / "out" / "local"))},
        "weights": {"default": default_weights()},
        "dt": {
            "type": ["null", "string"],
            "description": "YYYY-MM-DD; empty: the UTC day of the logical date (today for a run triggered "
            "now).",
        },
    }
)


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["fruits", "local"],
    default_args={"owner": "fruits", "retries": 0},
) as dag:

    @task
    def resolve_params() -> dict:
        """Reads and validates the run's params once, makes its paths absolute and checks them before
        anything is written; every later task gets the result."""
        from fruits_platform.local import preflight

        context = get_current_context()
        refuse_unknown_keys(context["dag_run"].conf, PARAMS)
        upload_day = context["params"].get("dt") or run_date.of_context(context)
        params = PipelineParams.from_mapping(context["params"], dt=upload_day).resolved()
        preflight.check_run(params)
        return params.as_dict()

    @task
    def stage_artifacts(run: dict) -> str:
        """Builds the step artifacts once per content; the Spark steps read them from this folder."""
        from fruits_platform.local import runner

        return str(runner.stage_artifacts(run["output"]))

    @task
    def spark_steps(run: dict, artifacts: str) -> dict:
        """The run's plan in one spark-submit of this task's own, which ends with it; returns each step's
        seconds."""
        from fruits_platform.local import runner
        from fruits_spark.contract import STEP_NAMES

        log = runner.log_path(run, "pipeline")
        print(f"running {', '.join(STEP_NAMES)}; Spark log: {log}")
        context = get_current_context()
        # the day's lease names this run: a CLI run or another DAG's of the same day fails, saying so
        holder = f"{context['dag'].dag_id}/{context['run_id']}"
        seconds = runner.run_steps(run, list(STEP_NAMES), Path(artifacts), SPARK_MASTER, holder=holder)
        return {"seconds": seconds, "log": str(log)}

    @task(outlets=[assets.FEATURES, assets.PCA])
    def summarize(run: dict) -> dict:
        """Publishes the run's report.json figures as this task's XCom, the day's features and PCA asset
        events, and prints where everything is."""
        from fruits_platform.local import runner
        from fruits_spark.report import describe_counts

        report = runner.read_report(run)
        print(f"outputs: {run['output']}; dt={report['dt']}: {describe_counts(report)}")
        context = get_current_context()
        for partition in assets.emit(context["outlet_events"], run["output"], [report]):
            print(f"asset event: {partition}")
        report_html = Layout(run["output"], run["dt"]).report(REPORT_HTML)
        context["ti"].xcom_push(key=links.REPORT_URL_KEY, value=links.report_url(report_html))
        cumulative = report["cumulative_explained_variance"]
        return {
            "dt": report["dt"],
            "counts": report["counts"],
            "reconciled": report["reconciled"],
            "k": report.get("k"),
            "explained_variance_at_k": cumulative[-1] if cumulative else None,
            "pca_model_version": report.get("pca_model_version"),
            "report": report_html,
        }

    run = resolve_params()
    artifacts = stage_artifacts(run)
    chain(artifacts, spark_steps(run, artifacts), links.with_report_link(summarize(run)))
