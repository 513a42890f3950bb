"""Features reused across days: a photo already embedded in the same feature space is copied, not inferred.

The rule: a curated image whose ``content_hash`` and ``embedding`` (weights digest + input size) match a row
of a *complete* features partition (Spark's ``_SUCCESS`` marker present) is copied from there bit for bit,
with this day's path and label; the CNN runs on the rest only. ``--recompute`` turns reuse off.

Cheap at scale: next to every features partition the step writes a compact index,
``features_index/dt=D/`` (content_hash, embedding: ~100 bytes a row against ~5 KB with the 1280 floats),
once ``features/dt=D`` has succeeded. The lookup reads the index only, semi-joins it with this day's hashes,
then reads ``features`` from just the partitions that hold a match. A complete features partition without
an index (written before the index existed) is scanned for its two small columns only (Parquet prunes the
rest).

Reruns: the day's own previous output counts as history (a retry after a failed PCA step, or a backfill,
infers nothing). A run writes the day's features and index to its staging area (``Layout(staged=True)``)
and the last step publishes them together (``fruits_spark.publish``), so the published partition stays
complete while it is read. Every reused row is still first written to ``_staging/features_reused/dt=D/``
and read back from there, so the features write never depends on the partition it may replace. Where a
layout is not staged (a step called on its own), the day's index is deleted before its features are
rewritten and written again after, so a run that dies half-way leaves a partition that no later run takes
as history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_spark import storage
from fruits_spark.frames import driver_frame
from fruits_spark.layout import Layout

INDEX = "features_index"
SUCCESS = "_SUCCESS"
REUSED_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField("label", T.StringType()),
        T.StructField("content_hash", T.StringType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("reused_from", T.StringType()),
    ]
)


@dataclass
class ReusePlan:
    """What the features step copies and what it infers for one day."""

    reused: DataFrame  # path, label, content_hash, features, reused_from: read from the staged copy
    n_reused: int
    n_images: int
    history: str  # "none", "N partitions (...)", "unreadable: ...", "not used: --recompute"
    reused_from: dict[str, int] = field(default_factory=dict)

    @property
    def n_to_infer(self) -> int:
        # ingest keeps one row per content hash a day, so every reused hash stands for exactly one image
        return self.n_images - self.n_reused


def staging_uri(layout: Layout) -> str:
    return layout.staging("features_reused")


def history_days(spark: SparkSession, layout: Layout) -> tuple[list[str], list[str]]:
    """(days with a complete features partition and a complete index, such days without an index).

    A features partition without _SUCCESS is half-written (a crashed run) or being rewritten: never history.
    """
    features_root, index_root = layout.root("features"), layout.root(INDEX)
    indexed, unindexed = [], []
    for name in storage.list_dirs(spark, features_root):
        if not name.startswith("dt=") or not storage.exists(spark, f"{features_root}/{name}/{SUCCESS}"):
            continue
        day = name.removeprefix("dt=")
        if storage.exists(spark, f"{index_root}/{name}/{SUCCESS}"):
            indexed.append(day)
        else:
            unindexed.append(day)
    return indexed, unindexed


def _read_days(spark: SparkSession, root: str, days: list[str], merge_schema: bool = False) -> DataFrame:
    # basePath keeps the dt=... folder as a column; it may be inferred as a date, hence the cast
    return (
        spark.read.option("basePath", root)
        # merging schemas costs a Spark job over every footer: only for days that may lack `embedding`
        .option("mergeSchema", str(merge_schema).lower())
        .parquet(*[f"{root}/dt={day}" for day in days])
        .withColumn("dt", F.col("dt").cast("string"))
    )


def read_index(spark: SparkSession, layout: Layout, indexed: list[str], unindexed: list[str]) -> DataFrame:
    """content_hash, embedding, dt of every history row: index files, or two pruned columns of features."""
    parts = []
    if indexed:
        parts.append(_read_days(spark, layout.root(INDEX), indexed).select("content_hash", "embedding", "dt"))
    if unindexed:
        scanned = _read_days(spark, layout.root("features"), unindexed, merge_schema=True)
        # days written before features carried their embedding cannot be matched to a feature space
        if "embedding" in scanned.columns:
            parts.append(scanned.select("content_hash", "embedding", "dt"))
    if not parts:
        return driver_frame(spark, [], "content_hash string, embedding string, dt string")
    index = parts[0]
    for part in parts[1:]:
        index = index.unionByName(part)
    return index


def find_matches(index: DataFrame, today: DataFrame, embedding: str) -> DataFrame:
    """content_hash, dt: for each of today's hashes found in the same feature space, one partition holding it.

    The earliest day wins: deterministic, and it is where the row was first computed (later ones are copies).
    """
    return (
        index.filter(F.col("embedding") == F.lit(embedding))
        .join(today.select("content_hash"), "content_hash", "left_semi")
        .groupBy("content_hash")
        .agg(F.min("dt").alias("dt"))
    )


def fetch_reused(
    spark: SparkSession, layout: Layout, today: DataFrame, matches: DataFrame, embedding: str
) -> DataFrame | None:
    """Today's rows (path, label) with the features of their match, read from the matched partitions only."""
    # bounded by one day's uploads, and used twice below: computed once
    matches = matches.cache()
    days = sorted(row["dt"] for row in matches.select("dt").distinct().collect())
    if not days:
        return None
    stored = (
        _read_days(spark, layout.root("features"), days)
        .filter(F.col("embedding") == F.lit(embedding))
        .select("content_hash", "features", "dt")
        # broadcast: matches are bounded by one day's uploads, while a shuffle would move every stored
        # feature array of the matched partitions (docs/BENCHMARKS.md, "Reuse lookup")
        .join(F.broadcast(matches), ["content_hash", "dt"], "left_semi")
        # ingest keeps one row per hash and day; this keeps a damaged partition from doubling rows
        .dropDuplicates(["content_hash"])
    )
    return today.join(stored, "content_hash").select(
        "path", "label", "content_hash", "features", F.col("dt").alias("reused_from")
    )


def _describe(indexed: list[str], unindexed: list[str]) -> str:
    if not indexed and not unindexed:
        return "none"
    days = len(indexed) + len(unindexed)
    return f"{days} partition{'s' if days > 1 else ''} ({len(indexed)} indexed, {len(unindexed)} scanned)"


def plan(spark: SparkSession, layout: Layout, embedding: str, recompute: bool = False) -> ReusePlan:
    """Finds and stages the reusable rows of this day; must run before features/dt=D is overwritten."""
    today = spark.read.parquet(layout.dataset("images")).select("path", "label", "content_hash")
    n_images = today.count()
    empty = driver_frame(spark, [], REUSED_SCHEMA)
    if recompute:
        result = ReusePlan(empty, 0, n_images, "not used: --recompute")
    else:
        try:
            indexed, unindexed = history_days(spark, layout)
            history = _describe(indexed, unindexed)
            result = ReusePlan(empty, 0, n_images, history)
            matches = find_matches(read_index(spark, layout, indexed, unindexed), today, embedding)
            reused = fetch_reused(spark, layout, today, matches, embedding)
            if reused is not None:
                # materialised before this day's partition is overwritten: it may be one of the sources
                reused.write.mode("overwrite").parquet(staging_uri(layout))
                staged = spark.read.parquet(staging_uri(layout)).select(*REUSED_SCHEMA.fieldNames())
                by_day = {
                    r["reused_from"]: r["n"]
                    for r in staged.groupBy("reused_from").agg(F.count("*").alias("n")).collect()
                }
                result = ReusePlan(
                    staged, sum(by_day.values()), n_images, history, dict(sorted(by_day.items()))
                )
        except Exception as error:  # history only saves work: whatever is wrong with it, infer everything
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            result = ReusePlan(empty, 0, n_images, f"unreadable: {type(error).__name__}: {reason}")
    # from here on the day's features are rewritten: no run may take their old index as a promise of
    # complete rows (the staged one when staged: the published index stays until the day is published)
    storage.delete(spark, layout.dataset(INDEX))
    return result


def skip_hashes(reuse: ReusePlan) -> DataFrame | None:
    """The hashes the CNN must not see again, or None when nothing is reused."""
    return reuse.reused.select("content_hash") if reuse.n_reused else None


def as_featurized(reuse: ReusePlan) -> DataFrame:
    """Reused rows in the shape of the features step's transform output (no error: nothing was inferred)."""
    return reuse.reused.select(
        "path", "label", "content_hash", "features", F.lit(None).cast("string").alias("error")
    )


def write_index(spark: SparkSession, layout: Layout) -> None:
    """The day's index, from what features/dt=D now holds; written only once that partition succeeded."""
    spark.read.parquet(layout.dataset("features")).select("content_hash", "embedding").write.mode(
        "overwrite"
    ).parquet(layout.dataset(INDEX))


def finish(spark: SparkSession, layout: Layout) -> None:
    write_index(spark, layout)
    storage.delete(spark, staging_uri(layout))
