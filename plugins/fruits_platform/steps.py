"""The pipeline's Spark steps: the one definition that both the EMR DAG and ``fruits run-local`` submit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

STEP_NAMES = ("ingest", "features", "pca")
PY_FILES_ZIP = "fruits_spark.zip"
K_RANGE = (1, 1280)


@dataclass(frozen=True)
class PipelineParams:
    input_uri: str
    output_uri: str
    dt: str
    weights_uri: str = "imagenet"
    k: int = 100
    input_size: int = 224
    refit: bool = False
    recompute: bool = False  # features: infer every image instead of reusing earlier rows

    def __post_init__(self) -> None:
        if not K_RANGE[0] <= self.k <= K_RANGE[1]:
            raise ValueError(f"k must be within {K_RANGE[0]}..{K_RANGE[1]}, got {self.k}")


@dataclass(frozen=True)
class SparkStep:
    name: str
    script: str
    args: tuple[str, ...]


def pipeline_steps(params: PipelineParams) -> list[SparkStep]:
    run = ("--output", params.output_uri, "--dt", params.dt)
    refit = ("--refit",) if params.refit else ()
    recompute = ("--recompute",) if params.recompute else ()
    return [
        SparkStep("ingest", "ingest.py", ("--input", params.input_uri, *run)),
        SparkStep(
            "features",
            "features.py",
            ("--weights", params.weights_uri, "--input-size", str(params.input_size), *recompute, *run),
        ),
        SparkStep("pca", "pca.py", ("--k", str(params.k), *refit, *run)),
    ]


def spark_submit_args(
    step: SparkStep, artifacts_uri: str, conf: Mapping[str, str], master: str | None = None
) -> list[str]:
    """``spark-submit`` arguments for one step, with the code taken from ``artifacts_uri``."""
    args = ["spark-submit"]
    if master:
        args += ["--master", master]
    for key, value in sorted(conf.items()):
        args += ["--conf", f"{key}={value}"]
    artifacts = artifacts_uri.rstrip("/")
    return [*args, "--py-files", f"{artifacts}/{PY_FILES_ZIP}", f"{artifacts}/{step.script}", *step.args]
