"""
### fruits_features_local: the feature pipeline on this machine (Spark local mode)

The same three Spark steps as `fruits_features_emr` (**ingest** → **features** → **pca**), run by the
task `spark_steps` in one Spark application (`spark-submit --master local[*]` on the Airflow worker, each
step's own `main()` with the arguments EMR gives it): one JVM start-up instead of three, what
`fruits run-local` runs too. No AWS account needed. Use it to develop, to demo, and to try params before
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

The Spark log is written to `<output>/_logs/dt=<dt>/pipeline.log`; the task log shows each step's lines
and the features step's progress. The params, their bounds and
their help are the pipeline contract's (`fruits_spark.contract`), the same as `fruits run-local --help`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.sdk import DAG, chain, get_current_context, task

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.dag_params import run_param
from fruits_platform.local import runner
from fruits_platform.pipeline import PipelineParams, default_weights
from fruits_spark.contract import STEP_NAMES
from fruits_spark.layout import REPORT_HTML, Layout

DAG_ID = "fruits_features_local"
SPARK_MASTER: str = os.environ.get("FRUITS_SPARK_MASTER", runner.LOCAL_MASTER)

PARAMS = {
    "input": run_param(
        "input", default=os.environ.get("FRUITS_LOCAL_INPUT", str(PROJECT_ROOT / "data" / "sample"))
    ),
    "output": run_param(
        "output", default=os.environ.get("FRUITS_LOCAL_OUTPUT", str(PROJECT_ROOT / "out" / "local"))
    ),
    "weights": run_param("weights", default=default_weights()),
    "k": run_param("k"),
    "input_size": run_param("input_size"),
    "refit": run_param("refit"),
    "engine": run_param("engine"),
    "recompute": run_param("recompute"),
    "dt": run_param(
        "dt", type=["null", "string"], description="YYYY-MM-DD; empty means the date of the run."
    ),
}


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["fruits", "local"],
) as dag:

    @task
    def resolve_params() -> dict:
        """Reads and validates the run's params once; every later task gets the result."""
        context = get_current_context()
        moment = context.get("data_interval_start") or context["dag_run"].run_after
        upload_day = context["params"].get("dt") or moment.date().isoformat()
        return PipelineParams.from_mapping(context["params"], dt=upload_day).as_dict()

    @task
    def stage_artifacts(run: dict) -> str:
        """Builds the step artifacts once per content; the Spark steps read them from this folder."""
        return str(runner.stage_artifacts(run["output"]))

    @task
    def spark_steps(run: dict, artifacts: str) -> dict:
        """ingest, features and pca in one Spark application; returns each step's seconds."""
        log = runner.log_path(run, "pipeline")
        print(f"running {', '.join(STEP_NAMES)}; Spark log: {log}")
        return {
            "seconds": runner.run_steps(run, list(STEP_NAMES), Path(artifacts), SPARK_MASTER),
            "log": str(log),
        }

    @task
    def summarize(run: dict) -> dict:
        """Publishes the run's report.json figures as this task's XCom and prints where everything is."""
        report = runner.read_report(run)
        print(f"outputs: {run['output']}; counts of dt={report['dt']}: {report['counts']}")
        cumulative = report["cumulative_explained_variance"]
        return {
            "dt": report["dt"],
            "counts": report["counts"],
            "reconciled": report["reconciled"],
            "k": report["k"],
            "explained_variance_at_k": cumulative[-1] if cumulative else None,
            "pca_model_version": report["pca_model_version"],
            "report": Layout(run["output"], run["dt"]).report(REPORT_HTML),
        }

    run = resolve_params()
    artifacts = stage_artifacts(run)
    chain(artifacts, spark_steps(run, artifacts), summarize(run))
