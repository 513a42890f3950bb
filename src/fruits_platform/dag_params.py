"""Airflow Params derived from the pipeline contract: the DAGs' trigger forms show the same names, types,
defaults, bounds and help as ``fruits run-local --help`` and the Spark jobs. The EMR DAGs' params (the
daily run's, and the range's days) are declared here once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from fruits_platform.aws import gdpr, pricing, shapes
from fruits_platform.aws.settings import DEFAULT_OUTPUT_PREFIX
from fruits_spark.contract import PARAMS

_JSON_TYPES = {str: "string", int: "integer", bool: "boolean"}


def run_param(name: str, **overrides: Any) -> Param:
    """The contract's param ``name`` as an Airflow Param; ``overrides`` (default, description, type...)
    say what differs on one DAG, e.g. where its input lives."""
    param = PARAMS[name]
    schema: dict[str, Any] = {
        "type": _JSON_TYPES[param.kind],
        "title": param.title,
        "description": param.help,
    }
    if param.choices is not None:
        schema["enum"] = list(param.choices)
    if param.minimum is not None:
        schema.update(minimum=param.minimum, maximum=param.maximum)
    if param.pattern is not None:
        schema["pattern"] = param.pattern
    if param.kind is str and param.pattern is None:
        schema["minLength"] = 1
    schema.update(overrides)
    default = schema.pop("default", param.default)
    return Param(default, **schema)


def refuse_unknown_keys(conf: Mapping | None, params: Mapping) -> None:
    """ValueError naming the run conf keys no param declares, and the params: Airflow would ignore them, and
    a stale name (``input_path``) would silently run over the default input."""
    unknown = sorted(set(conf or {}) - set(params))
    if unknown:
        raise ValueError(
            f"run conf key(s) {', '.join(unknown)} match no param of this DAG; its params are: "
            f"{', '.join(params)}"
        )


# fruits_features_emr's params, and fruits_features_emr_backfill's with the range's days
EMR_PARAMS = {
    "bucket": Param(
        None,
        type=["null", "string"],
        pattern=f"^$|{gdpr.BUCKET_NAME_PATTERN}",
        title="S3 bucket",
        description="Holds uploads/, artifacts/, emr-logs/ and the outputs; must be in `region`. "
        "Empty: the Airflow Variable fruits_bucket (what scheduled runs use).",
    ),
    "input": run_param(
        "input",
        default=None,
        type=["null", "string"],
        minLength=0,
        description="Prefix of the bucket holding the images, one sub-folder per label. "
        "Empty: uploads/dt=<the UTC day of the logical date: today for a manual run>/.",
    ),
    "output": run_param(
        "output",
        default=DEFAULT_OUTPUT_PREFIX,
        pattern=r"^[^/].*/$",
        description="Output root in the bucket: each dataset goes to <output><dataset>/dt=<day>/ "
        "(e.g. outputs/features/dt=2026-11-05/). Must be under the stack's OutputPrefix.",
    ),
    "weights": run_param(
        "weights",
        description="imagenet (downloaded once by the staging task), an s3:// URI, or the path of a "
        ".weights.h5 file on the Airflow worker (staged to S3).",
    ),
    "k": run_param("k"),
    "input_size": run_param("input_size"),
    "refit": run_param("refit"),
    "recompute": run_param("recompute"),
    "engine": run_param(
        "engine",
        description="onnx: the default, no TensorFlow on the cluster; tensorflow: the Keras "
        "reference (its bootstrap installs TensorFlow: a slower start)",
    ),
    # auto: the cost guard chooses (aws.shapes: the cheapest shape that meets the night); a value pins it
    "instance_type": Param(
        shapes.AUTO,
        type="string",
        enum=[shapes.AUTO, *pricing.INSTANCE_TYPES],
        title="Instance type",
        description="auto: the cheapest type that meets the deadline (Graviton *g types only for engines "
        "whose runtime has arm64 wheels: not tensorflow). A type pins it.",
    ),
    "core_nodes": Param(
        shapes.AUTO,
        type=["string", "integer"],
        enum=[shapes.AUTO, *range(shapes.MAX_CORE_NODES + 1)],
        title="Core nodes",
        description="auto: chosen with the type; 0: a single-node cluster; a number pins it.",
    ),
    "use_spot": Param(
        shapes.AUTO,
        type=["string", "boolean"],
        enum=[shapes.AUTO, True, False],
        title="Spot core nodes",
        description="auto: chosen with the type (the primary node is always On-Demand); true/false pins it.",
    ),
    "region": Param(
        "eu-west-3",
        type="string",
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
        title="AWS region",
        description="Must be an EU region (GDPR guard), the bucket's region, and the aws_default "
        "connection's region_name extra.",
    ),
    "budget_eur": Param(
        10,
        type="number",
        minimum=0,
        title="Budget (EUR)",
        description="The run is refused if its cost bound (from the limits the run enforces) exceeds this.",
    ),
}

# the days of fruits_features_emr_backfill (aws.backfill.days_in_range checks them)
RANGE_PARAMS = {
    "from_dt": Param(
        "",
        type="string",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="From upload day",
        description="First upload day of the range (YYYY-MM-DD): uploads/dt=<day>/.",
    ),
    "to_dt": Param(
        "",
        type="string",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="To upload day",
        description="Last upload day of the range, included (at most 31 days after from_dt).",
    ),
}
