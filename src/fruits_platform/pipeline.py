"""The pipeline's Spark steps: the one definition that ``fruits run-local``, the local DAG and the EMR DAG
submit, built on the contract in ``fruits_spark.contract``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

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


class PipelineParams(Mapping):
    """A run's parameters, the contract's ``RUN_PARAMS``: each validated once, when the run is defined, the
    unset ones at their default; a name the contract does not know is refused. Read as attributes
    (``params.output``) or as the mapping the steps' command lines are built from."""

    # what a run is named by first, in this order, where given without names
    POSITIONAL = ("input", "output", "dt", "weights")

    def __init__(self, *positional: Any, **values: Any) -> None:
        if len(positional) > len(self.POSITIONAL):
            raise TypeError(f"params without names are at most {', '.join(self.POSITIONAL)}")
        values.update(zip(self.POSITIONAL, positional, strict=False))
        unknown = sorted(set(values) - set(PARAMS))
        if unknown:
            raise ValueError(f"unknown run param(s) {', '.join(unknown)}; params are {', '.join(PARAMS)}")
        self._values = {
            name: param.validate(values.get(name, param.default)) for name, param in PARAMS.items()
        }

    @classmethod
    def from_mapping(cls, values: Mapping, **given) -> PipelineParams:
        """From a DAG run's params (or any mapping), taking only the contract's names; ``given`` wins."""
        return cls(**{name: values[name] for name in PARAMS if name in values and name not in given}, **given)

    def resolved(self) -> PipelineParams:
        """These params with every local path made absolute, once, at the edge where the run is defined:
        a step may run in another working directory (spark-submit, an Airflow worker)."""
        return PipelineParams(**{name: PARAMS[name].resolve(value) for name, value in self._values.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PipelineParams) and other._values == self._values

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PipelineParams({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def as_dict(self) -> dict:
        return dict(self._values)


@dataclass(frozen=True)
class SparkStep:
    """One entry of a run's plan: a step's name, its entry script and its command-line arguments."""

    name: str
    script: str
    args: tuple[str, ...]


def run_values(params: PipelineParams | Mapping) -> dict:
    """A run's params as a dict. A mapping is a ``PipelineParams.as_dict()`` already validated upstream
    (the DAGs pass their resolved run through XCom, the EMR DAG with the staged weights' URIs), not validated
    again."""
    return params.as_dict() if isinstance(params, PipelineParams) else dict(params)


def plan(params: PipelineParams | Mapping) -> tuple[SparkStep, ...]:
    """A run's plan: every step of the contract in order, the last stage (publish and report) included,
    with its command-line arguments. The one plan that every executor runs: the EMR steps
    (``aws.cluster.emr_steps``), a local spark-submit (``local.runner``) and the tests' in-process run."""
    values = run_values(params)
    return tuple(SparkStep(name, f"{name}.py", step_args(name, values)) for name in STEP_NAMES)


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


# what the JVM logs on its own (``[0.5s][warning][cds] Skipping ...``, ``WARN NativeCodeLoader``): never a
# step's reason, even where it names an Error or an Exception
_JVM_NOISE = re.compile(
    r"^(\[[\d.]+s\]|\[\w+\]|\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} (WARN|INFO)|WARNING:|OpenJDK)"
)


def failure_reason(step: str, log_text: str) -> str:
    """The line of a step's log that explains its failure: the job's own one-line message (``<step>: ...``),
    else the last exception, the JVM's own log lines left out. The same rule for a local log and an EMR
    step's stderr."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith(f"{step}: ")]
    if own:
        return own[-1]
    lines = [line for line in lines if not _JVM_NOISE.match(line)]
    errors = [line for line in lines if re.search(r"(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:300]
