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


def local_path(uri: str) -> str | None:
    """The one rule for "is this URI local?": the path of a plain path or a ``file:`` URI, None for any other
    scheme (s3://, hdfs://), which only Hadoop's FileSystem reads."""
    if uri.startswith("file:"):
        rest = uri.removeprefix("file:")
        return "/" + rest.lstrip("/") if rest.startswith("/") else rest
    return None if "://" in uri else uri


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Model input sides offered (pixels): MobileNetV2's ImageNet weights exist for these
INPUT_SIZES = (96, 128, 160, 192, 224)
FEATURE_DIM = 1280
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


# A run's day may be tomorrow (UTC) at most: where the uploader's day is already tomorrow (east of UTC). A day
# further ahead is a typo (2099-01-01): its outputs would be the latest report and the newest partition.
LATEST_DAY_AHEAD = 1


def check_run_date(text: str) -> None:
    """``check_date``, and a day no later than tomorrow (UTC): the day of a run, not of any path. Past days
    (backfills, the EMR DAG's logical dates) are all accepted."""
    check_date(text)
    latest = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=LATEST_DAY_AHEAD)
    if dt.date.fromisoformat(text) > latest:
        raise ValueError(
            f"must be an upload day no later than {latest.isoformat()} (tomorrow, UTC), got {text!r}: "
            "a day in the future would become the latest report"
        )


@dataclass(frozen=True)
class RunParam:
    """One run parameter: its one name, type, default, bounds or choices and help. The steps that take it
    say so in their records (``Step.params``; the output and the day go to every step)."""

    name: str
    kind: type
    default: Any
    title: str
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    # an optional param may be left empty: its flag is then not passed at all
    optional: bool = False
    # a rule the pattern cannot say (a real calendar date); raises ValueError with a human message
    check: Callable[[str], None] | None = None
    # a path or URI: a local path is made absolute once, where the run is defined (``resolve``)
    path: bool = False
    # filled by the platform (the EMR staging), not asked of people: no form field, no CLI default shown
    internal: bool = False

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

    def resolve(self, value: Any) -> Any:
        """A path param's local path made absolute (a step may run in another working directory); URIs
        and ``imagenet`` as given."""
        if not self.path or not isinstance(value, str) or not value or value == "imagenet":
            return value
        local = local_path(value)
        return value if local is None else str(Path(local).expanduser().resolve())

    def as_args(self, value: Any) -> tuple[str, ...]:
        if self.kind is bool:
            return (self.flag,) if value else ()
        if self.optional and not value:
            return ()
        return (self.flag, str(value))


@dataclass(frozen=True)
class Step:
    """A Spark step: ``module`` (imported on demand) has ``parser()`` and ``main(argv)``, which EMR submits
    as its own step and a local run calls in one application, in the order of ``STEPS``.

    Its record says everything the platform needs of it: the run params it takes (besides the output and
    the day, which every step takes), the datasets it writes under the output root (each partitioned by
    ``dt=``, staged while the run runs and published together by the last stage), and the keys of its
    stats that count as the day's counts in the report and the asset events."""

    name: str
    module: str
    # What it costs, in core-seconds per input image and per MB of input bytes (both known from the S3
    # listing before launch): its expected time and time limit on EMR follow (aws/cost.py). Measured by
    # `fruits bench` (docs/BENCHMARKS.md): per image on 20,000 thumbnails, per MB on 12 MP phone photos.
    core_seconds_per_image: float
    core_seconds_per_mb: float = 0.0
    params: tuple[RunParam, ...] = ()
    datasets: tuple[str, ...] = ()
    counts: tuple[str, ...] = ()
    # keys of its stats the report carries as they are (what made the day: the model, the engine...)
    reported: tuple[str, ...] = ()
    # a module whose ``report_html(summary) -> str`` renders the step's own section of report.html from the
    # report alone; pure Python, as the report's rendering (it runs again where Spark is absent)
    report_section: str = ""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class Engine:
    """An inference engine of the features step. ``module`` (imported on demand, on the driver and in the
    Python workers) has ``prepare(spark, args) -> (broadcast model, weights digest)``, run on the driver, and
    ``build(value, input_size, threads) -> infer``, run once per Python worker on the broadcast value.

    An engine that runs a pre-built artifact (ONNX: the exported model) names it in ``artifact``; its module
    then has ``build_artifact(weights_file, input_size, destination) -> Path``, which the EMR staging calls
    on the Airflow worker, and ``prepare`` reads the result from ``args.engine_artifact`` where given."""

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
    # the file name of the artifact staged before the cluster starts, empty for none
    artifact: str = ""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


# The output root and the day: every step's
COMMON_PARAMS: tuple[RunParam, ...] = (
    RunParam("output", str, None, "Output", "output root (a path or any Hadoop URI)", path=True),
    RunParam(
        "dt",
        str,
        None,
        "Upload date",
        "upload date of the batch (YYYY-MM-DD): every output goes to its dt= partition",
        pattern=DT_PATTERN,
        check=check_run_date,
    ),
)
# ONNX Runtime (default: no TensorFlow on the workers) and the Keras reference. Worker peaks measured at
# 20,000 images (docs/BENCHMARKS.md, round 2), rounded up.
ENGINES: list[Engine] = [
    Engine(
        "onnx",
        "fruits_spark.engines.onnx",
        "ONNX Runtime on the workers (no TensorFlow there)",
        requirements="requirements-emr.txt",
        worker_peak_mb=600,
        needs_tensorflow=False,
        artifact="mobilenet_v2.onnx",
    ),
    Engine(
        "tensorflow",
        "fruits_spark.engines.tensorflow",
        "the Keras reference",
        requirements="requirements-emr-tensorflow.txt",
        worker_peak_mb=2000,
        needs_tensorflow=True,
    ),
]
ENGINE_NAMES: list[str] = [engine.name for engine in ENGINES]


def _engine_help() -> str:
    return "; ".join(f"{engine.name}: {engine.help}" for engine in ENGINES)


# The steps' costs are measured and rounded up (docs/BENCHMARKS.md: per image on thumbnails, fixed costs
# included, round 2; per MB on 12 MP phone photos, "The guard's per-MB figure", round 3). Features and pca
# read the curated copies (at most 224 px a side): their cost does not follow the originals' size.
INGEST = Step(
    "ingest",
    "fruits_spark.ingest",
    core_seconds_per_image=0.026,
    core_seconds_per_mb=0.022,
    params=(
        RunParam(
            "input",
            str,
            None,
            "Input",
            "images to process, one sub-folder per label (a path or any Hadoop URI: file://, s3://)",
            path=True,
        ),
    ),
    datasets=("images", "rejected", "ignored"),
    counts=("files_seen", "rejected", "duplicates", "ignored"),
    reported=("input",),
)
FEATURES = Step(
    "features",
    "fruits_spark.features",
    core_seconds_per_image=0.021,
    params=(
        RunParam(
            "weights",
            str,
            "imagenet",
            "Model weights",
            "imagenet (Keras download), or a MobileNetV2 .weights.h5 path or URI",
            path=True,
        ),
        RunParam(
            "input_size",
            int,
            224,
            "Model input size",
            "side in pixels the images are resized to before MobileNetV2",
            choices=INPUT_SIZES,
        ),
        RunParam(
            "engine",
            str,
            "onnx",
            "Inference engine",
            _engine_help(),
            # the list itself: an engine registered later is a choice too
            choices=ENGINE_NAMES,  # type: ignore[arg-type]
        ),
        RunParam(
            "engine_artifact",
            str,
            "",
            "Engine artifact",
            "the engine's pre-built artifact (onnx: a .onnx exported for these weights and input size), a "
            "path or URI; EMR: staged by the DAG. Empty: the driver builds one, cached per embedding",
            optional=True,
            path=True,
            internal=True,
        ),
        RunParam(
            "recompute",
            bool,
            False,
            "Recompute every feature",
            "run the CNN on every image: reuse no feature row computed on an earlier day for the same photo",
        ),
    ),
    datasets=("features", "features_index", "rejected"),
    counts=("ok", "featurised", "reused", "rejected"),
    reported=(
        "weights",
        "engine",
        "input_size",
        "embedding",
        "model_builds",
        "rows_inferred",
        "history",
        "reused_from",
    ),
)
PCA = Step(
    "pca",
    "fruits_spark.pca",
    core_seconds_per_image=0.004,
    params=(
        RunParam(
            "k",
            int,
            100,
            "PCA components",
            f"number of principal components kept (1..{FEATURE_DIM})",
            minimum=1,
            maximum=FEATURE_DIM,
        ),
        RunParam(
            "refit",
            bool,
            False,
            "Refit the PCA model",
            "fit a new PCA model version on every day's features instead of applying the current one",
        ),
    ),
    datasets=("pca", "pca_csv"),
    reported=(
        "k",
        # the components written: k, or fewer where the fit's rank is lower (pca.meaningful)
        "components",
        "explained_variance",
        "explained_variance_on_day",
        "pca_model_version",
        "pca_model",
        "pca_model_note",
        "pca_fit_rows",
    ),
)


def _off_or_from(lowest: int) -> Callable[[int], None]:
    """The rule of a per-mille threshold where 0 turns its check off: below ``lowest`` it would flag what
    is not a finding (and make the near-duplicate join grow with the pairs)."""

    def check(value: int) -> None:
        if 0 < value < lowest:
            raise ValueError(f"must be 0 (off) or within {lowest}..1000, got {value}")

    return check


# Near-duplicates, suspicious labels and drift between days, from the day's features and the earlier days'.
# One step, not three: each reads the day and its history once, and each is one EMR step's start-up less.
# Defaults chosen with `python -m fruits_platform.tools.bench_quality` (docs/BENCHMARKS.md, round 4). Its
# cost is the highest of round 7's idle runs with every check on, at the largest count of each kind (2,000
# phone photos made from the sample's frames, where every photo has near neighbours; 20,000 thumbnails, ten
# copies of each): 0.0103 and 0.0055 core-seconds, rounded up.
QUALITY = Step(
    "quality",
    "fruits_spark.quality",
    core_seconds_per_image=0.011,
    params=(
        RunParam(
            "near_duplicate_similarity",
            int,
            900,
            "Near-duplicates: cosine (per mille)",
            "pairs of different photos whose embeddings' cosine similarity reaches this, in thousandths, "
            "within the day and against earlier days, go to near_duplicates/ (0: off)",
            minimum=0,
            maximum=1000,
            check=_off_or_from(800),
        ),
        RunParam(
            "label_margin",
            int,
            50,
            "Suspicious labels: margin (per mille)",
            "photos nearer (cosine) to another label's centroid than to their own by this margin, in "
            "thousandths, go to label_audit/ (0: off)",
            minimum=0,
            maximum=1000,
        ),
        RunParam(
            "drift_threshold",
            int,
            10,
            "Drift: centroid distance (per mille)",
            "the report names the labels whose centroid moved this far (cosine distance, in thousandths) "
            "from the earlier days' (0: off)",
            minimum=0,
            maximum=1000,
        ),
    ),
    datasets=("near_duplicates", "label_audit"),
    counts=("near_duplicate_pairs", "near_duplicate_groups", "suspicious_labels"),
    reported=("quality",),
    report_section="fruits_spark.quality_report",
)
# The last stage of every run, after every step: it publishes the day's staged datasets together and writes
# the run's report from every step's stats. Owned by the contract, not by a step: a step added anywhere in
# the plan is published and reported with the rest.
PUBLISH = Step("publish", "fruits_spark.publish", core_seconds_per_image=0.001, reported=("published",))

# The steps in their order, then the last stage. Mutated in place by ``register_step``, never rebound:
# every module that imported them sees a registered step.
STEPS: list[Step] = [INGEST, FEATURES, QUALITY, PCA, PUBLISH]
STEP_NAMES: list[str] = []
RUN_PARAMS: list[RunParam] = []
PARAMS: dict[str, RunParam] = {}
# Every dataset a run writes under its output root, each partitioned by dt=YYYY-MM-DD
DATASETS: list[str] = []


def _derive() -> None:
    """The lists every entry point reads, from the records: in place, so that ``from contract import X``
    sees a step or engine registered after its import."""
    STEP_NAMES[:] = [step.name for step in STEPS]
    ENGINE_NAMES[:] = [engine.name for engine in ENGINES]
    # the form's order: what the first step reads, where the run writes, then each step's own
    ordered = [*STEPS[0].params, *COMMON_PARAMS, *(p for step in STEPS[1:] for p in step.params)]
    by_name: dict[str, RunParam] = {}
    for param in ordered:
        if by_name.setdefault(param.name, param) is not param:
            raise ValueError(f"two params named {param.name!r}: a step shares a param by its record")
    RUN_PARAMS[:] = list(by_name.values())
    PARAMS.clear()
    PARAMS.update(by_name)
    DATASETS[:] = list(dict.fromkeys(name for step in STEPS for name in step.datasets))
    if PARAMS.get("engine") is not None:
        object.__setattr__(PARAMS["engine"], "help", _engine_help())


def register_step(step: Step, after: str) -> None:
    """Adds ``step`` to the plan right after the step ``after`` (never after the last stage)."""
    names = [record.name for record in STEPS]
    if step.name in names:
        raise ValueError(f"a step named {step.name!r} exists already")
    if after not in names[:-1]:
        raise ValueError(f"register {step.name!r} after one of {', '.join(names[:-1])}, not {after!r}")
    STEPS.insert(names.index(after) + 1, step)
    _derive()


def register_engine(engine: Engine) -> None:
    if engine.name in ENGINE_NAMES:
        raise ValueError(f"an engine named {engine.name!r} exists already")
    ENGINES.append(engine)
    _derive()


# Modules that register steps or engines of their own (``register_step``, ``register_engine``) when
# imported, comma-separated. ``load_plugins`` sets it for the processes a run starts (spark-submit, the
# EMR steps' drivers through spark-env), so that every process of a run knows the same records.
PLUGINS_ENV = "FRUITS_PLUGINS"
# the plugin modules this process loaded, in order (the artifacts ship them with the steps' code)
PLUGINS: list[str] = []


def load_plugins(*modules: str) -> None:
    """Imports each plugin module once (it registers its records) and names it in ``$FRUITS_PLUGINS``."""
    for module in modules:
        if module not in PLUGINS:
            importlib.import_module(module)
            PLUGINS.append(module)
    if PLUGINS:
        os.environ[PLUGINS_ENV] = ",".join(PLUGINS)


_derive()


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
    """The params ``step`` takes, in the run's order: its record's, the output and the day."""
    taken = {param.name for param in (*COMMON_PARAMS, *step_record(step).params)}
    return tuple(param for param in RUN_PARAMS if param.name in taken)


def param_steps(name: str) -> tuple[str, ...]:
    """The steps that take the param ``name``."""
    return tuple(step for step in STEP_NAMES if any(p.name == name for p in step_params(step)))


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


# a process started by a run (spark-submit, an EMR step's driver) knows the records its caller registered
load_plugins(*filter(None, os.environ.get(PLUGINS_ENV, "").split(",")))
