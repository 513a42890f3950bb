"""A run of the EMR DAG, resolved once from its params, its date and the Airflow Variables; and the run
date -> uploads prefix mapping that ``fruits upload`` shares.

Every later task (guards, staging, cluster spec, cost report) reads the result, never the params again.
Pure: no AWS call, no Airflow import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from fruits_platform.aws import staging
from fruits_platform.aws.gdpr import require_bucket
from fruits_platform.aws.refusal import GuardRefused
from fruits_platform.pipeline import PipelineParams

# Airflow Variables the DAG reads (docker-compose passes them as AIRFLOW_VAR_<NAME>)
VAR_BUCKET = "fruits_bucket"
VAR_PRICE_TABLE = "fruits_price_table"
VAR_JOB_FLOW_ROLE = "fruits_emr_job_flow_role"
VAR_SERVICE_ROLE = "fruits_emr_service_role"
VAR_SUBNET_ID = "fruits_emr_subnet_id"
VAR_SECURITY_CONFIGURATION = "fruits_emr_security_configuration"
# the stack's OutputPrefix, where the node role may write (infra/fruits-infra.yaml); unset: its default.
# The output root holds every dataset (features/, pca/, images/...), so it must not be named after one of
# them: "features/" gave s3://<bucket>/features/features/dt=...
VAR_OUTPUT_PREFIX = "fruits_output_prefix"
DEFAULT_OUTPUT_PREFIX = "outputs/"
# the infra stack's outputs: a run cannot start a cluster without them
REQUIRED_VARIABLES = (VAR_SERVICE_ROLE, VAR_JOB_FLOW_ROLE, VAR_SUBNET_ID)
VARIABLES = (
    VAR_BUCKET,
    VAR_PRICE_TABLE,
    VAR_JOB_FLOW_ROLE,
    VAR_SERVICE_ROLE,
    VAR_SUBNET_ID,
    VAR_SECURITY_CONFIGURATION,
    VAR_OUTPUT_PREFIX,
)


def uploads_prefix(upload_day: str) -> str:
    """Where ``fruits upload`` puts (and the DAG reads) the images of one upload date."""
    return f"uploads/dt={upload_day}/"


def input_prefix(param: str | None, upload_day: str) -> str:
    """The ``input_prefix`` param if given (e.g. the initial dataset), else that day's uploads."""
    prefix = (param or "").strip().lstrip("/")
    if not prefix:
        return uploads_prefix(upload_day)
    return prefix if prefix.endswith("/") else prefix + "/"


def require_variables(values: dict[str, str | None]) -> dict[str, str]:
    """The Airflow Variables the run cannot do without, all set; else one refusal naming every missing one.

    No fallback to EMR_DefaultRole / EMR_EC2_DefaultRole: infra/'s Airflow policy may pass only the stack's
    roles, so a default role would end in AccessDenied on RunJobFlow, retried for nothing."""
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        raise GuardRefused(
            f"Airflow Variable(s) {', '.join(missing)} not set: set them from the infra stack's outputs "
            "(docs/AWS.md, first-run checklist)"
        )
    return {name: str(value) for name, value in values.items()}


@dataclass(frozen=True)
class RunSettings:
    bucket: str
    region: str
    dt: str
    input_prefix: str
    output_prefix: str
    pipeline: dict
    instance_type: str
    core_nodes: int | str
    use_spot: bool | str
    budget_eur: float
    price_table: str | None
    job_flow_role: str
    service_role: str
    subnet_id: str
    security_configuration: str | None

    @property
    def input_uri(self) -> str:
        return self.pipeline["input"]

    @property
    def output_uri(self) -> str:
        return self.pipeline["output"]

    def as_dict(self) -> dict:
        return {**asdict(self), "input_uri": self.input_uri, "output_uri": self.output_uri}

    @classmethod
    def from_dict(cls, values: Mapping) -> RunSettings:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})


def check_output_writable(output_prefix: str, writable_prefix: str) -> None:
    """Refuses an output the cluster's nodes may not write: the node role allows PutObject/DeleteObject under
    the stack's OutputPrefix only, so such a run would start, pay, and fail on AccessDenied."""
    writable = writable_prefix.strip().lstrip("/")
    if not output_prefix.startswith(writable):
        raise GuardRefused(
            f"output {output_prefix} is outside what the EMR nodes may write ({writable}*, the stack's "
            f"OutputPrefix, Airflow Variable {VAR_OUTPUT_PREFIX}): the steps would fail on AccessDenied "
            "after the cluster was paid for"
        )


def resolve_settings(params: Mapping, upload_day: str, variables: Mapping[str, str | None]) -> RunSettings:
    """The run's settings; GuardRefused (one line) when a param or Variable is unusable."""
    bucket = require_bucket(params["bucket"] or variables.get(VAR_BUCKET))
    # no fallback to EMR's default roles: the stack's policy may pass only its own roles
    required = require_variables({name: variables.get(name) for name in REQUIRED_VARIABLES})
    prefix = input_prefix(params["input"], upload_day)
    output_prefix = params["output"].strip().lstrip("/").rstrip("/") + "/"
    check_output_writable(output_prefix, variables.get(VAR_OUTPUT_PREFIX) or DEFAULT_OUTPUT_PREFIX)
    try:
        pipeline = PipelineParams.from_mapping(
            params,
            input=staging.s3_uri(bucket, prefix),
            output=staging.s3_uri(bucket, output_prefix),
            dt=upload_day,
        )
    except ValueError as error:
        raise GuardRefused(f"param {error}") from None
    return RunSettings(
        bucket=bucket,
        region=params["region"],
        dt=upload_day,
        input_prefix=prefix,
        output_prefix=output_prefix,
        pipeline=pipeline.as_dict(),
        # "auto" stays until check_budget chooses the shape (aws.shapes): it needs the night's images
        instance_type=params["instance_type"],
        core_nodes=params["core_nodes"] if params["core_nodes"] == "auto" else int(params["core_nodes"]),
        use_spot=params["use_spot"] if params["use_spot"] == "auto" else bool(params["use_spot"]),
        budget_eur=float(params["budget_eur"]),
        price_table=variables.get(VAR_PRICE_TABLE),
        job_flow_role=required[VAR_JOB_FLOW_ROLE],
        service_role=required[VAR_SERVICE_ROLE],
        subnet_id=required[VAR_SUBNET_ID],
        security_configuration=variables.get(VAR_SECURITY_CONFIGURATION),
    )
