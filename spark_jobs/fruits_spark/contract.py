"""The pipeline contract, declared once: the steps, the inference engines, the run parameters, the image
extensions, the input sizes and the output datasets.

A step and an engine are each one record here plus one module (``STEPS``, ``ENGINES``): the local run, the
EMR steps and their time limits, executor sizing, staging, the report and the bench all read these records,
so adding one needs no other edit.

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
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Step:
    """A Spark step: ``module`` (imported on demand) has ``parser()`` and ``main(argv)``, which EMR submits
    as its own step and the local app calls in one application, in the order of ``STEPS``."""

    name: str
    module: str
    # What it costs, in core-seconds per input image and per MB of input bytes (both known from the S3
    # listing before launch): its expected time and time limit on EMR follow (aws/cost.py). Measured by
    # `fruits bench` (docs/BENCHMARKS.md): per image on 20,000 thumbnails, per MB on 12 MP phone photos.
    core_seconds_per_image: float
    core_seconds_per_mb: float = 0.0

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class Engine:
    """An inference engine of the features step. ``module`` (imported on demand, on the driver and in the
    Python workers) has ``prepare(spark, args) -> (broadcast model, weights digest)``, run on the driver, and
    ``build(value, input_size, threads) -> infer``, run once per Python worker on the broadcast value."""

    name: str
    module: str
    help: str
    # bootstrap/ file that installs the EMR nodes' Python runtime for this engine
    requirements: str
    # peak RSS of one Python worker running the features UDF (MB), measured by `fruits bench`
    # (docs/BENCHMARKS.md); executor sizing (aws/sizing.py) follows it
    worker_peak_mb: int
    # the driver and the workers need TensorFlow (the features step says so before any task when it is absent)
    needs_tensorflow: bool
    # the EMR staging exports the model to ONNX on the Airflow worker and passes it as --onnx-model, so that
    # the nodes never import TensorFlow
    staged_onnx: bool = False

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


# Per image (docs/BENCHMARKS.md, round 2): the whole run at 2,000 thumbnails, fixed costs included, 19.9
# img/s per core = 0.050 core-seconds an image, split by the steps' seconds at 20,000 (ingest 52 %,
# features 42 %, pca 8 %, rounded up). Per MB (round 3 on an idle machine, 2,000 phone photos of 2.74 MB,
# 4032x3024): ingest took 85.24 s in its job on 2 cores, 170.5 core-seconds, of which 2,000 x 0.026 are
# its per-image share; the other 118.5 over 5,483 MB are 0.0216 core-seconds a MB, rounded up. Features
# and pca read the curated copies (at most 224 px a side): their cost does not follow the originals' size.
STEPS: tuple[Step, ...] = (
    Step("ingest", "fruits_spark.ingest", core_seconds_per_image=0.026, core_seconds_per_mb=0.022),
    Step("features", "fruits_spark.features", core_seconds_per_image=0.021),
    Step("pca", "fruits_spark.pca", core_seconds_per_image=0.004),
)
# ONNX Runtime (default: no TensorFlow on the workers) and the Keras reference. Worker peaks: ONNX Runtime
# 521 MB at 20,000 images (8 images per session run; 574-611 MB with 16), TensorFlow 1.6-2.0 GB, rounded up.
ENGINES: tuple[Engine, ...] = (
    Engine(
        "onnx",
        "fruits_spark.engines.onnx",
        "ONNX Runtime on the workers (no TensorFlow there)",
        requirements="requirements-emr.txt",
        worker_peak_mb=600,
        needs_tensorflow=False,
        staged_onnx=True,
    ),
    Engine(
        "tensorflow",
        "fruits_spark.engines.tensorflow",
        "the Keras reference",
        requirements="requirements-emr-tensorflow.txt",
        worker_peak_mb=2000,
        needs_tensorflow=True,
    ),
)
STEP_NAMES = tuple(step.name for step in STEPS)
ENGINE_NAMES = tuple(engine.name for engine in ENGINES)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Model input sides offered (pixels): MobileNetV2's ImageNet weights exist for these
INPUT_SIZES = (96, 128, 160, 192, 224)
FEATURE_DIM = 1280
# Every dataset a run writes under its output root, each partitioned by dt=YYYY-MM-DD
DATASETS = ("images", "features", "features_index", "pca", "pca_csv", "rejected", "ignored")
# The environment variable that names the weights where a flag or param does not
WEIGHTS_ENV = "FRUITS_WEIGHTS"
# The environment variable naming this machine's cache (ONNX exports, the local Spark driver's class
# archive); ~/.cache/fruits where unset
CACHE_ENV = "FRUITS_CACHE"


def machine_cache(part: str) -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "fruits") / part


# The PCA model of a day fitted on that day alone (too few rows to keep a model): what its rows, its report
# and its asset events name instead of a kept version
PROVISIONAL_MODEL = "provisional"
DT_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def check_date(text: str) -> None:
    """ValueError unless ``text`` is a real calendar day written YYYY-MM-DD: it names output partitions."""
    try:
        real = bool(re.match(DT_PATTERN, text)) and dt.date.fromisoformat(text).isoformat() == text
    except ValueError:
        real = False
    if not real:
        raise ValueError(f"must be a real date written YYYY-MM-DD (for example {today()}), got {text!r}")


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
    # a rule the pattern cannot say (a real calendar date); raises ValueError with a human message
    check: Callable[[str], None] | None = None

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
        if self.check is not None:
            try:
                self.check(converted)
            except ValueError as error:
                raise ValueError(f"{self.name} {error}") from None
        elif self.pattern is not None and not re.match(self.pattern, converted):
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
        check=check_date,
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
        "; ".join(f"{engine.name}: {engine.help}" for engine in ENGINES),
        steps=("features",),
        choices=ENGINE_NAMES,
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


def step_record(name: str) -> Step:
    for record in STEPS:
        if record.name == name:
            return record
    raise ValueError(f"unknown step {name!r}; steps are {', '.join(STEP_NAMES)}")


def engine_record(name: str) -> Engine:
    for record in ENGINES:
        if record.name == name:
            return record
    raise ValueError(f"unknown engine {name!r}; engines are {', '.join(ENGINE_NAMES)}")


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
