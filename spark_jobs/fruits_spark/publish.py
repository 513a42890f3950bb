"""The run's last stage (``contract.PUBLISH``): a day's datasets change together, or not at all, and the
run's report says what every step did.

Every step writes this date's datasets to ``_staging/<dataset>/dt=D`` (``Layout(staged=True)``) and the
later steps read them back from there; nothing under a dataset root changes while a step can still fail.
Once the last step has written everything, ``publish`` replaces the day's partition of every dataset by
its staged one. Moves go through Hadoop's FileSystem (a rename on file://, a copy and delete on s3://),
so the window in which a crash could leave the day incomplete is the moves themselves, after all the
work; a rerun of the date repairs it. The reuse index goes first out and last in: a features partition
is never taken as history on the promise of an index that does not describe it.

It runs after every step of the plan, whichever steps the contract holds: the datasets it publishes and the
counts it reports are the step records' (``Step.datasets``, ``Step.counts``).
"""

from __future__ import annotations

import argparse
import time

from pyspark.sql import SparkSession

from fruits_spark import contract, report, storage
from fruits_spark.contract import DATASETS
from fruits_spark.layout import Layout
from fruits_spark.reuse import INDEX


def remove_order() -> tuple[str, ...]:
    """The index out first and in last: see the module's docstring."""
    return (INDEX, *(name for name in DATASETS if name != INDEX))


def publish(spark: SparkSession, layout: Layout) -> list[str]:
    """Replaces every dataset's partition of ``layout.dt`` by its staged copy; returns the datasets moved.

    A dataset with nothing staged loses its old partition too: the day is what this run wrote."""
    staged = {name for name in DATASETS if storage.exists(spark, layout.staging(name))}
    target = layout.published
    order = remove_order()
    for name in order:
        storage.delete(spark, target.dataset(name))
    for name in reversed(order):
        if name in staged:
            storage.move(spark, layout.staging(name), target.dataset(name))
    return sorted(staged)


def parser() -> argparse.ArgumentParser:
    return contract.step_parser("publish", "Publish the day's staged datasets together and write the report.")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-publish").getOrCreate()
    layout = Layout(args.output, args.dt, staged=True)
    steps = [name for name in contract.STEP_NAMES if name != contract.PUBLISH.name]
    stats = {name: storage.read_stats(spark, layout, name) for name in steps}
    missing = [name for name in steps if not stats[name]]
    if missing:
        # a step that wrote no stats did not finish: the day stays as it was
        raise SystemExit(
            f"publish: no stats of {', '.join(missing)} for dt={args.dt} under {args.output}: "
            "run every step first; the day's published datasets were left as they were"
        )
    published = publish(spark, layout)
    stats["publish"] = {
        "step": "publish",
        "published": published,
        "seconds": round(time.monotonic() - started, 2),
    }
    storage.write_stats(spark, layout, "publish", stats["publish"])
    summary = report.build_summary(layout.dt, stats)
    report.write_report(spark, layout.published, summary)
    print(f"publish: {', '.join(published)} of dt={args.dt} published; report at {layout.report()}")
