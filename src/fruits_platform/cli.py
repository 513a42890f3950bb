"""The ``fruits`` command: run the pipeline locally, benchmark it, upload images to S3."""

from __future__ import annotations

import argparse
import sys

from fruits_platform.aws import upload
from fruits_platform.pipeline import WEIGHTS_HELP, PipelineParams, default_weights
from fruits_platform.tools import bench
from fruits_spark.contract import DATASETS, RUN_PARAMS, STEP_NAMES, today
from fruits_spark.layout import REPORT_HTML, Layout
from fruits_spark.report import describe_counts


class DefaultsHelp(argparse.HelpFormatter):
    """``--help`` shows every option's default, except where there is none (required, flags, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, "", False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _run_local(args: argparse.Namespace) -> int:
    from fruits_platform.lease import LeaseHeld
    from fruits_platform.local.runner import StepFailed, run_local

    try:
        params = PipelineParams(**{param.name: getattr(args, param.name) for param in RUN_PARAMS}).resolved()
        report, _ = run_local(params, master=args.master)
    except (StepFailed, LeaseHeld, ValueError, FileNotFoundError) as error:
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
        "run-local",
        help=f"run the steps ({', '.join(STEP_NAMES)}) with Spark in local mode",
        description="Runs the pipeline's plan on this machine in one spark-submit of its own, which ends "
        "with the command: the day's datasets are published together under --output/<dataset>/dt=<dt>/, "
        "with report.json and report.html. Nothing is written when a param cannot work.",
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
    local.add_argument(
        "--master",
        default=None,
        help="Spark master; by default local[N], N the cores whose Python workers fit in half this machine's "
        "memory beside the driver's 1 GiB heap",
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
    for command in commands.choices.values():
        command.formatter_class = DefaultsHelp
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
