"""The ``fruits`` command: run the pipeline locally, benchmark it, upload images to S3."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fruits_platform.aws import upload
from fruits_platform.local.runner import LOCAL_MASTER
from fruits_platform.pipeline import WEIGHTS_HELP, PipelineParams, default_weights
from fruits_platform.tools import bench
from fruits_spark.contract import DATASETS, RUN_PARAMS, STEP_NAMES, today
from fruits_spark.layout import REPORT_HTML, Layout


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
        report, _ = run_local(params, master=args.master)
    except (StepFailed, ValueError, FileNotFoundError) as error:
        print(f"fruits: {error}", file=sys.stderr)
        return 1
    counts = report["counts"]
    print(
        f"done: {counts['ok']} images featurised ({counts['reused']} of them reused from earlier days), "
        f"{counts['rejected']} rejected, "
        f"{counts['duplicates']} duplicates, {counts['ignored']} ignored (of {counts['files_seen']} files)"
    )
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
    local.add_argument("--master", default=LOCAL_MASTER, help="Spark master (default: every local core)")
    local.set_defaults(handler=_run_local)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _register_run_local(commands)
    upload.register(commands)
    bench.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
