"""The pipeline's Spark steps: the one definition that ``fruits run-local``, the local DAG and the EMR DAG
submit, built on the contract in ``fruits_spark.contract``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from fruits_spark.contract import PARAMS, STEP_NAMES, WEIGHTS_ENV, step_args

PY_FILES_ZIP = "fruits_spark.zip"
# the entry script of local runs: several steps in one Spark application (fruits_spark.local_app)
LOCAL_APP = "local_app.py"


def default_weights() -> str:
    """The ``weights`` default of ``fruits run-local``, ``fruits bench``, the demo and the local DAG:
    $FRUITS_WEIGHTS where set (the Makefile points it at the team's offline backbone), else the contract's
    default. The Spark jobs never read it: they are given ``--weights``."""
    return os.environ.get(WEIGHTS_ENV) or PARAMS["weights"].default


WEIGHTS_HELP = f"{PARAMS['weights'].help} (default: ${WEIGHTS_ENV} where set)"


@dataclass(frozen=True)
class PipelineParams:
    """A run's parameters, each validated against the contract once, when the run is defined."""

    input: str
    output: str
    dt: str
    weights: str = PARAMS["weights"].default
    input_size: int = PARAMS["input_size"].default
    k: int = PARAMS["k"].default
    refit: bool = PARAMS["refit"].default
    engine: str = PARAMS["engine"].default
    onnx_model: str = PARAMS["onnx_model"].default
    recompute: bool = PARAMS["recompute"].default

    def __post_init__(self) -> None:
        for field in fields(self):
            object.__setattr__(self, field.name, PARAMS[field.name].validate(getattr(self, field.name)))

    @classmethod
    def from_mapping(cls, values: Mapping, **given) -> PipelineParams:
        """From a DAG run's params (or any mapping), taking only the contract's names; ``given`` wins."""
        names = {field.name for field in fields(cls)}
        return cls(**{name: values[name] for name in names if name in values and name not in given}, **given)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SparkStep:
    name: str
    script: str
    args: tuple[str, ...]


def run_values(params: PipelineParams | Mapping) -> dict:
    """A run's params as a dict. A mapping is a ``PipelineParams.as_dict()`` already validated upstream
    (the DAGs pass their resolved run through XCom, the EMR DAG with the staged weights' URIs), not validated
    again."""
    return params.as_dict() if isinstance(params, PipelineParams) else dict(params)


def pipeline_steps(params: PipelineParams | Mapping) -> list[SparkStep]:
    """The steps' command lines (``run_values``)."""
    values = run_values(params)
    return [SparkStep(name, f"{name}.py", step_args(name, values)) for name in STEP_NAMES]


def spark_submit_args(
    step: SparkStep,
    artifacts_uri: str,
    conf: Mapping[str, str],
    *,
    binary: str = "spark-submit",
    master: str | None = None,
    deploy_mode: str | None = None,
) -> list[str]:
    """``spark-submit`` arguments for one step, with the code taken from ``artifacts_uri``."""
    args = [binary]
    if master:
        args += ["--master", master]
    if deploy_mode:
        args += ["--deploy-mode", deploy_mode]
    for key, value in sorted(conf.items()):
        args += ["--conf", f"{key}={value}"]
    artifacts = artifacts_uri.rstrip("/")
    return [*args, "--py-files", f"{artifacts}/{PY_FILES_ZIP}", f"{artifacts}/{step.script}", *step.args]


def failure_reason(step: str, log_text: str) -> str:
    """The line of a step's log that explains its failure: the job's own one-line message (``<step>: ...``),
    else the last exception. The same rule for a local log and an EMR step's stderr."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith(f"{step}: ")]
    if own:
        return own[-1]
    errors = [line for line in lines if re.search(r"(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:300]
