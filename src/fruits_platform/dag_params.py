"""The EMR DAGs' params (the daily run's, and the range's days), declared here once: the pipeline's from
the contract (``fruits_platform.forms``), the cluster's and the bucket's here."""

from __future__ import annotations

from fruits_platform.aws import gdpr, pricing, shapes
from fruits_platform.aws.settings import DEFAULT_OUTPUT_PREFIX
from fruits_platform.forms import form_param, pipeline_params, refuse_unknown_keys, run_param

__all__ = ["RANGE_PARAMS", "emr_params", "refuse_unknown_keys", "run_param"]


def emr_params() -> dict:
    """fruits_features_emr's params, and fruits_features_emr_backfill's with the range's days: built when
    a DAG file is parsed, from the contract as it is then (a registered step's params included)."""
    return {
        "bucket": form_param(
            None,
            type=["null", "string"],
            pattern=f"^$|{gdpr.BUCKET_NAME_PATTERN}",
            title="S3 bucket",
            description="Holds uploads/, artifacts/, emr-logs/ and the outputs; must be in `region`. "
            "Empty: the Airflow Variable fruits_bucket (what scheduled runs use).",
        ),
        **pipeline_params(
            {
                "input": {
                    "default": None,
                    "type": ["null", "string"],
                    "minLength": 0,
                    "description": "Prefix of the bucket holding the images, one sub-folder per label. "
                    "Empty: uploads/dt=<the UTC day of the logical date: today for a manual run>/.",
                },
                "output": {
                    "default": DEFAULT_OUTPUT_PREFIX,
                    "pattern": r"^[^/].*/$",
                    "description": "Output root in the bucket: each dataset goes to "
                    "<output><dataset>/dt=<day>/ (e.g. outputs/features/dt=2026-11-05/). Must be under the "
                    "stack's OutputPrefix.",
                },
                "weights": {
                    "description": "imagenet (downloaded once by the staging task), an s3:// URI, or the "
                    "path of a .weights.h5 file on the Airflow worker (staged to S3)."
                },
                "engine": {
                    "description": "onnx: the default, no TensorFlow on the cluster; tensorflow: the Keras "
                    "reference (its bootstrap installs TensorFlow: a slower start)"
                },
            },
            # the day is the logical date's (run_date): a range of days is the backfill DAG's
            leave_out=("dt",),
        ),
        # auto: the cost guard chooses (aws.shapes: the cheapest shape that meets the night); a value pins it
        "instance_type": form_param(
            shapes.AUTO,
            type="string",
            enum=[shapes.AUTO, *pricing.INSTANCE_TYPES],
            title="Instance type",
            description="auto: the cheapest type that meets the deadline (Graviton *g types only for engines "
            "whose runtime has arm64 wheels: not tensorflow). A type pins it.",
        ),
        "core_nodes": form_param(
            shapes.AUTO,
            type=["string", "integer"],
            enum=[shapes.AUTO, *range(shapes.MAX_CORE_NODES + 1)],
            title="Core nodes",
            description="auto: chosen with the type; 0: a single-node cluster; a number pins it.",
        ),
        "use_spot": form_param(
            shapes.AUTO,
            type=["string", "boolean"],
            enum=[shapes.AUTO, True, False],
            title="Spot core nodes",
            description="auto: chosen with the type (the primary node is always On-Demand); true/false "
            "pins it.",
        ),
        "region": form_param(
            "eu-west-3",
            type="string",
            pattern=r"^[a-z]{2}(-[a-z]+)+-\d$",
            title="AWS region",
            description="Must be an EU region (GDPR guard), the bucket's region, and the aws_default "
            "connection's region_name extra.",
        ),
        "budget_eur": form_param(
            10,
            type="number",
            minimum=0,
            title="Budget (EUR)",
            description="The run is refused if its cost bound (from the limits the run enforces) exceeds "
            "this.",
        ),
    }


# the days of fruits_features_emr_backfill (aws.backfill.days_in_range checks them)
RANGE_PARAMS = {
    "from_dt": form_param(
        "",
        type="string",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="From upload day",
        description="First upload day of the range (YYYY-MM-DD): uploads/dt=<day>/.",
    ),
    "to_dt": form_param(
        "",
        type="string",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        title="To upload day",
        description="Last upload day of the range, included (at most 31 days after from_dt).",
    ),
}
