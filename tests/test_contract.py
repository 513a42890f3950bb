"""The pipeline contract: every command line, trigger form and step agrees on names, bounds and defaults."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from fruits_platform.cli import build_parser
from fruits_platform.pipeline import PipelineParams, plan
from fruits_spark import contract
from tests.dags import load_dag

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUN = {"input": "/data/in", "output": "/data/out", "dt": "2026-11-20"}


def test_step_command_lines_parse_back_to_the_run_params():
    """What a DAG or the CLI submits is exactly what each job's own parser reads."""
    params = PipelineParams(**RUN, weights="s3://b/w.weights.h5", input_size=160, k=7, refit=True)
    for step in plan(params):
        parsed = vars(contract.step_parser(step.name, "").parse_args(list(step.args)))
        for param in contract.step_params(step.name):
            assert parsed[param.name] == getattr(params, param.name), (step.name, param.name)


def test_a_step_takes_only_its_own_params():
    params = PipelineParams(**RUN, refit=True)
    steps = {step.name: step for step in plan(params)}
    ingest, features, pca, publish = (steps[name] for name in ("ingest", "features", "pca", "publish"))
    # the last stage takes the output and the day only
    assert list(steps)[-1] == "publish"
    assert publish.args == ("--output", "/data/out", "--dt", "2026-11-20")
    assert "--k" not in ingest.args
    assert "--k" not in features.args
    assert "--refit" in pca.args
    assert "--weights" in features.args
    assert "--input" in ingest.args


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k": 0}, "k must be within 1..1280"),
        ({"k": 1281}, "k must be within 1..1280"),
        ({"k": 2.5}, "k must be a whole number"),
        ({"input_size": 200}, "input_size must be one of 96, 128, 160, 192, 224"),
        ({"dt": "20-11-2026"}, "dt must be a real date written YYYY-MM-DD"),
        ({"dt": "29/11/2026"}, "dt must be a real date written YYYY-MM-DD .for example"),
        ({"dt": "2026-13-45"}, "dt must be a real date.*got '2026-13-45'"),
        ({"dt": "2026-02-29"}, "dt must be a real date"),
        # a day after tomorrow (UTC) would become the latest report
        ({"dt": "2099-01-01"}, r"dt must be an upload day no later than \d{4}-\d{2}-\d{2} \(tomorrow, UTC\)"),
        ({"weights": ""}, "weights must not be empty"),
        ({"refit": "yes"}, "refit must be true or false"),
    ],
)
def test_run_params_are_validated_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        PipelineParams(**{**RUN, **overrides})


@pytest.mark.parametrize("step", contract.STEP_NAMES)
def test_job_parsers_refuse_out_of_contract_values(step, capsys):
    base = ["--output", "/o", "--dt", "2026-11-20"] + (["--input", "/i"] if step == "ingest" else [])
    bad = {
        "ingest": ["--dt", "yesterday"],
        "features": ["--input-size", "100"],
        "pca": ["--k", "0"],
        "publish": ["--dt", "2026-02-30"],
    }.get(step, ["--dt", "2026-13-01"])
    with pytest.raises(SystemExit) as exit_info:
        contract.step_parser(step, "").parse_args(base + bad)
    assert exit_info.value.code == 2
    assert "argument" in capsys.readouterr().err


def test_cli_flags_and_defaults_are_the_contracts(monkeypatch):
    monkeypatch.delenv(contract.WEIGHTS_ENV, raising=False)
    args = build_parser().parse_args(["run-local", "--input", "i", "--output", "o"])
    for param in contract.RUN_PARAMS:
        if param.default is not None:
            assert getattr(args, param.name) == param.default, param.name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run-local", "--input", "i", "--output", "o", "--k", "5000"])


def triggered_with(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


@pytest.mark.parametrize("dag_id", ["fruits_features_local", "fruits_features_emr"])
def test_both_dags_name_and_bound_the_run_params_like_the_cli(dag_id):
    """One input has one name everywhere, and a trigger form refuses what the jobs would refuse."""
    from airflow.sdk.exceptions import ParamValidationError

    dag = load_dag(dag_id)
    shared = {"input", "output", "weights", "k", "input_size", "refit"}
    assert shared <= set(dag.params)
    for conf in ({"k": 0}, {"k": 1281}, {"input_size": 100}):
        with pytest.raises(ParamValidationError):
            triggered_with(dag, conf)
    for name in ("k", "input_size", "refit"):
        assert dag.params[name] == contract.PARAMS[name].default, name


@pytest.mark.parametrize("command", [[], ["run-local"], ["upload"], ["bench"]])
def test_help_is_plain_text_for_a_terminal(command, capsys):
    """No reST markup (``fruits``) leaks from docstrings into --help; a command says what it does; no
    default is printed twice."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    out = capsys.readouterr().out
    assert "usage: fruits" in out
    assert "``" not in out
    lines = out.splitlines()
    # the paragraph after the usage lines describes the command
    described = lines[lines.index("") + 1] if "" in lines else ""
    assert described, out[:600]
    assert not described.startswith(("options:", "positional")), out[:600]
    # each option's help, the lines from its flag to the next flag
    options = re.split(r"\n  -", out.split("options:", 1)[-1])
    for option in options:
        assert len(re.findall(r"\bdefault\b", option)) <= 1, option


def test_a_failed_steps_reason_is_its_error_not_the_jvms_own_log_lines():
    """What a failed step's log holds when Spark cannot read its input: the JVM's own warnings come after the
    error, and must not be taken for the reason."""
    from fruits_platform.pipeline import failure_reason

    log = "\n".join(
        [
            "Traceback (most recent call last):",
            '  File "/x/pca.py", line 12, in main',
            "pyspark.errors.exceptions.captured.AnalysisException: [UNABLE_TO_INFER_SCHEMA] Unable to infer "
            "schema for Parquet. It must be specified manually.",
            "[0.412s][warning][cds] Skipping org/apache/spark/Foo: Signed JAR (Exception in class loading)",
            "26/12/03 21:00:01 WARN NativeCodeLoader: Unable to load native-hadoop library (Error ignored)",
        ]
    )
    assert "UNABLE_TO_INFER_SCHEMA" in failure_reason("pca", log)
    # a step's own one-line message wins over any exception
    assert failure_reason("pca", log + "\npca: no features staged for dt=2026-11-20") == (
        "pca: no features staged for dt=2026-11-20"
    )
