"""The ``fruits`` command: run the pipeline locally, benchmark it, upload images to S3, see to the local
Spark daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fruits_platform.aws import upload
from fruits_platform.local import spark_daemon
from fruits_platform.local.runner import LOCAL_MASTER
from fruits_platform.pipeline import WEIGHTS_HELP, PipelineParams, default_weights
from fruits_platform.tools import bench
from fruits_spark.contract import DATASETS, RUN_PARAMS, STEP_NAMES, today
from fruits_spark.layout import REPORT_HTML, Layout
from fruits_spark.report import describe_counts


class DefaultsHelp(argparse.HelpFormatter):
    """``--help`` shows every option's default, except where there is none (required, flags, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or action.required
            or action.default in (None, "", False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def local_path(value: str) -> str:
    """A local path made absolute (spark-submit runs elsewhere); URIs and ``imagenet`` as given."""
    return value if value == "imagenet" or "://" in value else str(Path(value).resolve())


def _run_local(args: argparse.Namespace) -> int:
    from fruits_platform.local.runner import StepFailed, run_local

    values = {param.name: getattr(args, param.name) for param in RUN_PARAMS}
    values.update(
        input=local_path(args.input), output=local_path(args.output), weights=local_path(args.weights)
    )
    try:
        params = PipelineParams(**values)
        report, _ = run_local(params, master=args.master, daemon=not args.no_daemon)
    except (StepFailed, ValueError, FileNotFoundError) as error:
        print(f"fruits: {error}", file=sys.stderr)
        return 1
    # the report's own words: what the terminal says is what report.json and report.html say
    print(f"done: {describe_counts(report)}")
    layout = Layout(params.output, params.dt)
    print(f"outputs: {layout.output}/{{{','.join(DATASETS)}}}/dt={params.dt}/")
    print(f"report:  {layout.report(REPORT_HTML)}")
    return 0


def _register_run_local(commands) -> None:
    local = commands.add_parser(
        "run-local", help=f"run the steps ({', '.join(STEP_NAMES)}) with Spark in local mode"
    )
    for param in RUN_PARAMS:
        if param.name in ("input", "output"):
            param.add_argument(local, required=True)
        elif param.name == "dt":
            param.add_argument(local, default=today())
        elif param.name == "weights":
            param.add_argument(local, default=default_weights(), help=WEIGHTS_HELP)
        else:
            param.add_argument(local)
    local.add_argument("--master", default=LOCAL_MASTER, help="Spark master (local[*]: every local core)")
    local.add_argument(
        "--no-daemon",
        action="store_true",
        help="a spark-submit of its own instead of the local Spark daemon that local runs share "
        "(`fruits daemon stop` ends the daemon; it also exits after 15 idle minutes)",
    )
    local.set_defaults(handler=_run_local)


# what `fruits --help` says: plain text for a terminal (the module docstring is reST for developers)
DESCRIPTION = """Fruits! feature pipeline: turns folders of labelled fruit photos into MobileNetV2 features
and their PCA projection, on this machine (Spark local mode) or, through Airflow, on a transient EMR
cluster."""
EPILOG = """examples:
  fruits run-local --input data/sample --output out/local    the 40 bundled images, no AWS needed
  fruits upload --source photos/ --bucket my-fruits-bucket   today's photos to uploads/dt=<today>/
  fruits bench --images 600                                  images per second and memory

`fruits <command> --help` lists a command's options. The Airflow DAGs (make airflow) run the same steps:
fruits_features_local on this machine, fruits_features_emr on EMR (docs/AWS.md)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fruits",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _register_run_local(commands)
    upload.register(commands)
    bench.register(commands)
    spark_daemon.register(commands)
    for command in commands.choices.values():
        command.formatter_class = DefaultsHelp
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
