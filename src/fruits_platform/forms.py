"""Airflow Params derived from the pipeline contract: a DAG's trigger form shows the same names, types,
defaults, bounds and help as ``fruits run-local --help`` and the Spark jobs. Every run param of the contract
(``RUN_PARAMS``: a registered step's own included) becomes a form field, except those the platform fills.

No AWS import: the local DAG builds its form from here alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from fruits_spark.contract import PARAMS, RUN_PARAMS

_JSON_TYPES = {str: "string", int: "integer", bool: "boolean"}
# Airflow validates a param with jsonschema.validate, which first checks the schema against its metaschema,
# and does so for every param of every task each time a DAG is serialized, compared or run (the
# dag-processor, the scheduler, each task, dag.test). Without "$schema" that metaschema is draft 2020-12's;
# draft-07's, which has every keyword these forms use, checks in a third of the time (docs/BENCHMARKS.md).
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"


def form_param(default: Any, **schema: Any) -> Param:
    """An Airflow Param whose schema names its JSON Schema draft (``JSON_SCHEMA_DRAFT``)."""
    return Param(default, **{"$schema": JSON_SCHEMA_DRAFT}, **schema)


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
    return form_param(default, **schema)


def pipeline_params(overrides: Mapping[str, Mapping[str, Any]], leave_out: tuple[str, ...] = ()) -> dict:
    """A form field for every run param of the contract, in its order, but the internal ones (staged by
    the platform) and ``leave_out``; ``overrides[name]`` as for ``run_param``."""
    return {
        param.name: run_param(param.name, **overrides.get(param.name, {}))
        for param in RUN_PARAMS
        if not param.internal and param.name not in leave_out
    }


def refuse_unknown_keys(conf: Mapping | None, params: Mapping) -> None:
    """ValueError naming the run conf keys no param declares, and the params: Airflow would ignore them, and
    a stale name (``input_path``) would silently run over the default input."""
    unknown = sorted(set(conf or {}) - set(params))
    if unknown:
        raise ValueError(
            f"run conf key(s) {', '.join(unknown)} match no param of this DAG; its params are: "
            f"{', '.join(params)}"
        )
