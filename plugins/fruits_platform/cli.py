"""The ``fruits`` command: run the pipeline locally, benchmark it, upload images to S3."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import sys
from pathlib import Path

from fruits_platform.steps import PipelineParams

WEIGHTS_ENV = "FRUITS_WEIGHTS"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        default=os.environ.get(WEIGHTS_ENV, "imagenet"),
        help=f"imagenet (download) or a .weights.h5 path/URI; default ${WEIGHTS_ENV} or imagenet",
    )
    parser.add_argument("--k", type=int, default=100, help="PCA components (1..1280)")
    parser.add_argument("--input-size", type=int, default=224, choices=(96, 128, 160, 192, 224))


def _run_local(args: argparse.Namespace) -> int:
    from fruits_platform.local_run import StepFailed, run_local

    output = Path(args.output).resolve()
    weights = (
        args.weights
        if args.weights == "imagenet" or "://" in args.weights
        else str(Path(args.weights).resolve())
    )
    try:
        params = PipelineParams(
            str(Path(args.input).resolve()),
            str(output),
            args.dt,
            weights,
            args.k,
            args.input_size,
            args.refit,
            args.recompute,
        )
        report = run_local(params, master=args.master)
    except (StepFailed, ValueError, FileNotFoundError) as error:
        print(f"fruits: {error}", file=sys.stderr)
        return 1
    counts = report["counts"]
    print(
        f"done: {counts['ok']} images featurised ({counts.get('reused', 0)} reused), "
        f"{counts['rejected']} rejected, "
        f"{counts['duplicates']} duplicates, {counts['ignored']} ignored (of {counts['files_seen']} files)"
    )
    print(f"outputs: {output}/{{images,features,pca,pca_csv,rejected}}/dt={args.dt}/")
    print(f"report:  {output}/report.json, {output}/report.html")
    return 0


def _register_run_local(commands) -> None:
    local = commands.add_parser("run-local", help="run ingest, features and pca with Spark in local mode")
    local.add_argument("--input", required=True, help="folder of images, one sub-folder per label")
    local.add_argument("--output", required=True, help="output folder")
    local.add_argument(
        "--dt",
        default=dt.datetime.now(dt.UTC).date().isoformat(),
        help="upload date of this batch (YYYY-MM-DD): the output partition",
    )
    local.add_argument("--refit", action="store_true", help="fit a new PCA model version")
    local.add_argument(
        "--recompute", action="store_true", help="run the CNN on every image, reuse no earlier features"
    )
    local.add_argument("--master", default="local[*]")
    add_run_arguments(local)
    local.set_defaults(handler=_run_local)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _register_run_local(commands)
    # each further sub-command lives in its own module, with a register(commands) function
    for module in ("fruits_platform.upload", "fruits_platform.bench"):
        try:
            importlib.import_module(module).register(commands)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
