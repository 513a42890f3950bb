"""Argument parsing and session creation shared by the three entry points."""

from __future__ import annotations

import argparse
import datetime as dt

from pyspark.sql import SparkSession


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", required=True, help="output root (local path, file://, s3://)")
    parser.add_argument(
        "--dt",
        default=dt.datetime.now(dt.UTC).date().isoformat(),
        help="upload date this run processes (YYYY-MM-DD); outputs go to dt=<date> partitions",
    )
    return parser


def spark_session(app_name: str) -> SparkSession:
    return SparkSession.builder.appName(app_name).getOrCreate()
