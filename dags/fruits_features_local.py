"""
### fruits_features_local: the feature pipeline on this machine (Spark local mode)

The same three Spark steps as `fruits_features_emr` (**ingest** → **features** → **pca**), submitted
with `spark-submit --master local[*]` on the Airflow worker: no AWS account needed. Use it to develop,
to demo, and to try params before paying for a cluster.

Trigger it from the UI ("Trigger" → the form below) with:

| param | meaning |
| --- | --- |
| `input_path` | folder of images, one sub-folder per label |
| `output_path` | output folder: `images/`, `features/`, `pca/`, `pca_csv/`, `rejected/`, `report.json` |
| `weights` | `imagenet` (download) or the path of a MobileNetV2 `.weights.h5` file |
| `k` | PCA components (1..1280) |
| `input_size` | model input side in pixels (96..224) |
| `refit` | fit a new PCA model version instead of applying the current one |
| `recompute` | run the CNN on every image instead of reusing features of photos already seen |
| `dt` | upload date (YYYY-MM-DD) of the batch; empty = the run's date |

Each step's Spark log is written to `<output_path>/_logs/dt=<dt>/<step>.log`.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from airflow.sdk import DAG, Param, chain, get_current_context, task

from fruits_platform.artifacts import PROJECT_ROOT, build_artifacts, content_hash
from fruits_platform.local_run import run_step, spark_env
from fruits_platform.steps import STEP_NAMES, PipelineParams, pipeline_steps

DAG_ID = "fruits_features_local"
DEFAULT_INPUT: str = os.environ.get("FRUITS_LOCAL_INPUT", str(PROJECT_ROOT / "data" / "sample"))
DEFAULT_OUTPUT: str = os.environ.get("FRUITS_LOCAL_OUTPUT", str(PROJECT_ROOT / "out" / "local"))
DEFAULT_WEIGHTS: str = os.environ.get("FRUITS_WEIGHTS", "imagenet")
SPARK_MASTER: str = os.environ.get("FRUITS_SPARK_MASTER", "local[*]")

PARAMS = {
    "input_path": Param(
        DEFAULT_INPUT,
        type="string",
        minLength=1,
        title="Input folder",
        description="Folder of images, one sub-folder per label.",
    ),
    "output_path": Param(DEFAULT_OUTPUT, type="string", minLength=1, title="Output folder"),
    "weights": Param(
        DEFAULT_WEIGHTS,
        type="string",
        minLength=1,
        title="Model weights",
        description="imagenet, or the path of a MobileNetV2 .weights.h5 file.",
    ),
    "k": Param(100, type="integer", minimum=1, maximum=1280, title="PCA components"),
    "input_size": Param(224, type="integer", enum=[96, 128, 160, 192, 224], title="Model input size"),
    "refit": Param(False, type="boolean", title="Refit the PCA model"),
    "recompute": Param(False, type="boolean", title="Recompute every feature (reuse none)"),
    "dt": Param(
        None,
        type=["null", "string"],
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="Upload date",
        description="YYYY-MM-DD; empty means the date of the run.",
    ),
}


def run_date(context) -> str:
    if context["params"].get("dt"):
        return context["params"]["dt"]
    moment = context.get("data_interval_start") or context["dag_run"].run_after
    return moment.date().isoformat() if moment else dt.date.today().isoformat()


def pipeline_params(context) -> PipelineParams:
    params = context["params"]
    return PipelineParams(
        input_uri=params["input_path"],
        output_uri=params["output_path"],
        dt=run_date(context),
        weights_uri=params["weights"],
        k=int(params["k"]),
        input_size=int(params["input_size"]),
        refit=bool(params["refit"]),
        recompute=bool(params.get("recompute", False)),
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
) as dag:

    @task
    def stage_artifacts() -> str:
        """Builds the step artifacts once per run; the Spark steps read them from this folder."""
        context = get_current_context()
        output = Path(context["params"]["output_path"])
        with tempfile.TemporaryDirectory() as scratch:
            built = build_artifacts(Path(scratch))
            target = output / "_artifacts" / content_hash(built)
            if not target.exists():
                shutil.copytree(built, target)
        return str(target)

    def spark_step(name: str):
        @task(task_id=name)
        def run(artifacts: str) -> dict:
            context = get_current_context()
            pipeline = pipeline_params(context)
            step = next(s for s in pipeline_steps(pipeline) if s.name == name)
            logs = Path(pipeline.output_uri) / "_logs" / f"dt={pipeline.dt}"
            logs.mkdir(parents=True, exist_ok=True)
            env = spark_env()
            print(f"running {name}; Spark log: {logs / (name + '.log')}")
            seconds = run_step(step, Path(artifacts), logs, SPARK_MASTER, env)
            return {"step": name, "seconds": round(seconds, 2), "log": str(logs / f"{name}.log")}

        return run

    @task
    def summarize() -> dict:
        """Publishes report.json as this task's XCom and prints where everything is."""
        import json

        context = get_current_context()
        output = Path(context["params"]["output_path"])
        report = json.loads((output / "report.json").read_text())
        print(f"outputs: {output}; report: {output / 'report.html'}; counts: {report['counts']}")
        cumulative = report["cumulative_explained_variance"]
        return {
            "dt": report["dt"],
            "counts": report["counts"],
            "reconciled": report["reconciled"],
            "k": report["k"],
            "explained_variance_at_k": cumulative[-1] if cumulative else None,
            "pca_model_version": report["pca_model_version"],
            "report": str(output / "report.html"),
        }

    artifacts = stage_artifacts()
    steps = [spark_step(name)(artifacts) for name in STEP_NAMES]
    chain(artifacts, *steps, summarize())
