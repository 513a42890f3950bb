"""The last step's hand-over: a day's datasets change together, or not at all.

Every step writes this date's datasets to ``_staging/<dataset>/dt=D`` (``Layout(staged=True)``) and the
later steps read them back from there; nothing under a dataset root changes while a step can still fail.
Once the last step has written everything, ``publish`` replaces the day's partition of every dataset by
its staged one. Moves go through Hadoop's FileSystem (a rename on file://, a copy and delete on s3://),
so the window in which a crash could leave the day incomplete is the moves themselves, after all the
work; a rerun of the date repairs it. The reuse index goes first out and last in: a features partition
is never taken as history on the promise of an index that does not describe it.
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from fruits_spark import storage
from fruits_spark.contract import DATASETS
from fruits_spark.layout import Layout
from fruits_spark.reuse import INDEX

# the index out first and in last: see the module's docstring
REMOVE_ORDER = (INDEX, *(name for name in DATASETS if name != INDEX))


def publish(spark: SparkSession, layout: Layout) -> list[str]:
    """Replaces every dataset's partition of ``layout.dt`` by its staged copy; returns the datasets moved.

    A dataset with nothing staged loses its old partition too: the day is what this run wrote."""
    staged = {name for name in DATASETS if storage.exists(spark, layout.staging(name))}
    target = layout.published
    for name in REMOVE_ORDER:
        storage.delete(spark, target.dataset(name))
    for name in reversed(REMOVE_ORDER):
        if name in staged:
            storage.move(spark, layout.staging(name), target.dataset(name))
    return sorted(staged)
