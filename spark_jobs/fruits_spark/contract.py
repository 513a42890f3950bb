"""The pipeline contract, declared once: the run parameters, the steps, the image extensions, the input sizes
and the output datasets.

Everything that takes a run parameter derives it from here: the Spark jobs' argparse (``step_parser``), the
``fruits`` command's flags (``add_argument``), both DAGs' Params (``fruits_platform.dag_params``) and the
steps' command lines (``step_args``). One input has one name everywhere: ``input_size`` is the DAG param,
``--input-size`` the flag of the CLI and of the job, and ``input_size`` the field of ``PipelineParams``.

Pure Python on purpose: this module ships to the cluster in the jobs' zip and is imported by Airflow's
task processes, so it imports neither Spark nor Airflow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STEP_NAMES = ("ingest", "features", "pca")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Model input sides offered (pixels): MobileNetV2's ImageNet weights exist for these
INPUT_SIZES = (96, 128, 160, 192, 224)
FEATURE_DIM = 1280
# Every dataset a run writes under its output root, each partitioned by dt=YYYY-MM-DD
DATASETS = ("images", "features", "features_index", "pca", "pca_csv", "rejected", "ignored")
# The environment variable that names the weights where a flag or param does not
WEIGHTS_ENV = "FRUITS_WEIGHTS"
# The features step's inference engines: ONNX Runtime (no TensorFlow on the workers) and the Keras reference
ENGINES = ("onnx", "tensorflow")
DT_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


@dataclass(frozen=True)
class RunParam:
    """One run parameter: its one name, type, default, bounds or choices, help, and the steps that take it."""

    name: str
    kind: type
    default: Any
    title: str
    help: str
    steps: tuple[str, ...]
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    # an optional param may be left empty: its flag is then not passed at all
    optional: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value: Any) -> Any:
        """The value converted to ``kind``; ValueError naming the param when it is out of its contract."""
        if self.optional and value in (None, ""):
            return ""
        if value is None:
            raise ValueError(f"{self.name} is required")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        try:
            converted = self.kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be {self.kind.__name__}, got {value!r}") from None
        if self.kind is int and isinstance(value, float) and value != converted:
            raise ValueError(f"{self.name} must be a whole number, got {value!r}")
        if self.choices is not None and converted not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if (
            self.minimum is not None
            and self.maximum is not None
            and not (self.minimum <= converted <= self.maximum)
        ):
            raise ValueError(f"{self.name} must be within {self.minimum}..{self.maximum}, got {value!r}")
        if self.pattern is not None and not re.match(self.pattern, converted):
            raise ValueError(f"{self.name} must match {self.pattern}, got {value!r}")
        if self.kind is str and not converted:
            raise ValueError(f"{self.name} must not be empty")
        return converted

    def parse(self, text: str) -> Any:
        """argparse ``type=``: the same validation, reported as a usage error."""
        try:
            return self.validate(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    def add_argument(self, parser: argparse.ArgumentParser, **overrides: Any) -> None:
        """This param as a command-line flag; ``overrides`` (default, required, help) per command."""
        options: dict[str, Any] = {"help": self.help, "dest": self.name}
        if self.kind is bool:
            options.update(action="store_true")
        else:
            options.update(type=self.parse, default=self.default, metavar=self.name.upper())
            if self.choices is not None:
                options.update(choices=self.choices, metavar=None)
        options.update(overrides)
        parser.add_argument(self.flag, **options)

    def as_args(self, value: Any) -> tuple[str, ...]:
        if self.kind is bool:
            return (self.flag,) if value else ()
        if self.optional and not value:
            return ()
        return (self.flag, str(value))


RUN_PARAMS: tuple[RunParam, ...] = (
    RunParam(
        "input",
        str,
        None,
        "Input",
        "images to process, one sub-folder per label (a path or any Hadoop URI: file://, s3://)",
        steps=("ingest",),
    ),
    RunParam("output", str, None, "Output", "output root (a path or any Hadoop URI)", steps=STEP_NAMES),
    RunParam(
        "dt",
        str,
        None,
        "Upload date",
        "upload date of the batch (YYYY-MM-DD): every output goes to its dt= partition",
        steps=STEP_NAMES,
        pattern=DT_PATTERN,
    ),
    RunParam(
        "weights",
        str,
        "imagenet",
        "Model weights",
        "imagenet (Keras download), or a MobileNetV2 .weights.h5 path or URI",
        steps=("features",),
    ),
    RunParam(
        "input_size",
        int,
        224,
        "Model input size",
        "side in pixels the images are resized to before MobileNetV2",
        steps=("features",),
        choices=INPUT_SIZES,
    ),
    RunParam(
        "engine",
        str,
        "onnx",
        "Inference engine",
        "onnx: ONNX Runtime on the workers (no TensorFlow there); tensorflow: the Keras reference",
        steps=("features",),
        choices=ENGINES,
    ),
    RunParam(
        "onnx_model",
        str,
        "",
        "Exported ONNX model",
        "a .onnx path or URI exported for these weights and input size (EMR: staged by the DAG); "
        "empty: the driver exports one, cached per embedding",
        steps=("features",),
        optional=True,
    ),
    RunParam(
        "recompute",
        bool,
        False,
        "Recompute every feature",
        "run the CNN on every image: reuse no feature row computed on an earlier day for the same photo",
        steps=("features",),
    ),
    RunParam(
        "k",
        int,
        100,
        "PCA components",
        f"number of principal components kept (1..{FEATURE_DIM})",
        steps=("pca",),
        minimum=1,
        maximum=FEATURE_DIM,
    ),
    RunParam(
        "refit",
        bool,
        False,
        "Refit the PCA model",
        "fit a new PCA model version on every day's features instead of applying the current one",
        steps=("pca",),
    ),
)
PARAMS: dict[str, RunParam] = {param.name: param for param in RUN_PARAMS}


def step_params(step: str) -> tuple[RunParam, ...]:
    if step not in STEP_NAMES:
        raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEP_NAMES)}")
    return tuple(param for param in RUN_PARAMS if step in param.steps)


def step_args(step: str, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The command-line arguments of ``step`` for a run's validated values."""
    return tuple(arg for param in step_params(step) for arg in param.as_args(values[param.name]))


def step_parser(step: str, description: str) -> argparse.ArgumentParser:
    """A Spark job's parser: the run params of its step (input and output required, dt today by default)."""
    parser = argparse.ArgumentParser(description=description)
    for param in step_params(step):
        if param.name in ("input", "output"):
            param.add_argument(parser, required=True)
        elif param.name == "dt":
            param.add_argument(parser, default=today())
        else:
            param.add_argument(parser)
    return parser
