"""Step 1, ingestion: every file under the input becomes a curated image, a rejection or an ignored entry.

extract (binaryFile, recursive) -> transform (validate, normalise, deduplicate) -> load (Parquet per dt).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_spark import contract, images, storage
from fruits_spark.layout import Layout

# 50 MB: far above any phone photo; bigger files are refused before their bytes are read
MAX_FILE_BYTES = 50 * 1024 * 1024
# Spark counts 4 MB per file when packing partitions, so 2,000 photos of 5-50 KB make 60+ tiny tasks;
# at 256 KB per file they pack into a few tasks per core, and a cluster still gets one task per core.
FILE_OPEN_COST_BYTES = 256 * 1024

BINARY_FILE_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField("modificationTime", T.TimestampType()),
        T.StructField("length", T.LongType()),
        T.StructField("content", T.BinaryType()),
    ]
)
INSPECTION_SCHEMA = T.StructType(
    [
        T.StructField("reason", T.StringType()),
        T.StructField("detail", T.StringType()),
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("content", T.BinaryType()),
    ]
)


@dataclass(frozen=True)
class IngestParams:
    input_root: str
    max_file_bytes: int = MAX_FILE_BYTES
    max_pixels: int = images.MAX_PIXELS


UNLISTED_SCHEMA = "path string, status string, reason string, detail string"


def extract(spark: SparkSession, input_uri: str) -> tuple[DataFrame, DataFrame, int]:
    """(files Spark reads, files its reader never yields, number of files seen).

    Spark's file sources skip hidden files and zero-length files without a word: the Hadoop listing finds
    them so that they are accounted for too.
    """
    root = storage.qualify(spark, input_uri)
    listing = storage.list_files(spark, input_uri)
    unlisted = []
    for listed in listing:
        if images.is_hidden(listed.uri.removeprefix(root)):
            unlisted.append((listed.uri, "ignored", "hidden", None))
        elif listed.length == 0:
            named_image = images.is_image_name(listed.uri)
            unlisted.append(
                (
                    listed.uri,
                    "rejected" if named_image else "ignored",
                    "empty" if named_image else "not_an_image_name",
                    "0 bytes",
                )
            )
    unlisted_df = spark.createDataFrame(unlisted, UNLISTED_SCHEMA)
    if len(unlisted) == len(listing):
        return spark.createDataFrame([], BINARY_FILE_SCHEMA), unlisted_df, len(listing)
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(input_uri)
    return files, unlisted_df, len(listing)


def label_column(path: F.Column, input_root: str) -> F.Column:
    """The label is the parent folder's name; files directly under the input root are unlabelled."""
    parent = F.regexp_extract(path, r"^(.*)/[^/]*$", 1)
    return F.when(parent == F.lit(input_root.rstrip("/")), F.lit("unlabelled")).otherwise(
        F.element_at(F.split(path, "/"), -2)
    )


def _inspect_udf(max_pixels: int):
    @F.pandas_udf(INSPECTION_SCHEMA)
    def inspect(contents: pd.Series) -> pd.DataFrame:
        rows = [images.inspect_image(data, max_pixels) for data in contents]
        return pd.DataFrame(
            {
                "reason": [r.reason for r in rows],
                "detail": [r.detail for r in rows],
                "width": pd.array([r.width for r in rows], dtype="Int32"),
                "height": pd.array([r.height for r in rows], dtype="Int32"),
                "content": [r.content for r in rows],
            }
        )

    return inspect


def transform(files: DataFrame, params: IngestParams, unlisted: DataFrame | None = None) -> DataFrame:
    """Classify each file: status ok | rejected | duplicate | ignored, with a reason where not ok.

    ``unlisted`` holds files already classified from the listing (hidden, zero-length).
    """
    is_image_name = F.col("path").rlike(images.IMAGE_NAME_REGEX)
    size_ok = (F.col("length") > 0) & (F.col("length") <= params.max_file_bytes)

    not_read = files.filter(~is_image_name | ~size_ok).select(
        "path",
        F.when(~is_image_name, F.lit("ignored")).otherwise(F.lit("rejected")).alias("status"),
        F.when(~is_image_name, F.lit("not_an_image_name"))
        .when(F.col("length") == 0, F.lit("empty"))
        .otherwise(F.lit("too_large"))
        .alias("reason"),
        F.concat(F.col("length").cast("string"), F.lit(" bytes")).alias("detail"),
    )

    inspected = (
        files.filter(is_image_name & size_ok)
        .select(
            "path",
            F.sha2("content", 256).alias("content_hash"),
            _inspect_udf(params.max_pixels)("content").alias("i"),
        )
        .select("path", "content_hash", "i.*")
    )
    first_of_hash = Window.partitionBy("content_hash").orderBy("path")
    ranked = inspected.withColumn("rank", F.row_number().over(first_of_hash)).withColumn(
        "kept_path", F.first("path").over(first_of_hash)
    )
    is_duplicate = F.col("reason").isNull() & (F.col("rank") > 1)
    classified = ranked.select(
        "path",
        F.when(is_duplicate, F.lit("duplicate"))
        .when(F.col("reason").isNull(), F.lit("ok"))
        .otherwise(F.lit("rejected"))
        .alias("status"),
        F.when(is_duplicate, F.lit("duplicate")).otherwise(F.col("reason")).alias("reason"),
        F.when(is_duplicate, F.concat(F.lit("same content as "), F.col("kept_path")))
        .otherwise(F.col("detail"))
        .alias("detail"),
        "content_hash",
        "width",
        "height",
        "content",
    )
    if unlisted is not None:
        not_read = not_read.unionByName(unlisted)
    return classified.unionByName(not_read, allowMissingColumns=True).select(
        "path",
        label_column(F.col("path"), params.input_root).alias("label"),
        "status",
        "reason",
        "detail",
        "content_hash",
        "width",
        "height",
        "content",
    )


def load(classified: DataFrame, layout: Layout) -> dict:
    classified.persist()
    try:
        classified.filter(F.col("status") == "ok").select(
            "path", "label", "content_hash", "width", "height", "content"
        ).write.mode("overwrite").parquet(layout.dataset("images"))
        classified.filter(F.col("status").isin("rejected", "duplicate")).select(
            "path", "reason", "detail"
        ).write.mode("overwrite").parquet(layout.rejected("ingest"))
        classified.filter(F.col("status") == "ignored").select("path", "reason").write.mode(
            "overwrite"
        ).parquet(layout.dataset("ignored"))
        counts = {
            (row["status"], row["reason"]): row["n"]
            for row in classified.groupBy("status", "reason").agg(F.count("*").alias("n")).collect()
        }
    finally:
        classified.unpersist()
    by_status: dict[str, int] = {}
    for (status, _), n in counts.items():
        by_status[status] = by_status.get(status, 0) + n
    return {
        "classified": sum(counts.values()),
        "ok": by_status.get("ok", 0),
        "rejected": by_status.get("rejected", 0),
        "duplicates": by_status.get("duplicate", 0),
        "ignored": by_status.get("ignored", 0),
        "rejected_by_reason": {
            reason: n for (status, reason), n in sorted(counts.items()) if status == "rejected"
        },
    }


def parser() -> argparse.ArgumentParser:
    parser = contract.step_parser("ingest", "Ingest fruit images into curated Parquet.")
    parser.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-ingest").getOrCreate()
    spark.conf.set("spark.sql.files.openCostInBytes", str(FILE_OPEN_COST_BYTES))
    layout = Layout(args.output, args.dt)
    files, unlisted, files_seen = extract(spark, args.input)
    params = IngestParams(storage.qualify(spark, args.input), args.max_file_bytes)
    stats = load(transform(files, params, unlisted), layout)
    # the listing is the ground truth: a file classified nowhere shows up here as a mismatch
    stats.update(
        step="ingest", input=args.input, files_seen=files_seen, seconds=round(time.monotonic() - started, 2)
    )
    storage.write_stats(spark, layout, "ingest", stats)
    print(
        f"ingest: {stats['ok']} ok, {stats['rejected']} rejected, {stats['duplicates']} duplicates, "
        f"{stats['ignored']} ignored of {stats['files_seen']} files"
    )
