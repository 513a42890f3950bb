"""Step 1, ingestion: every file under the input becomes a curated image, a rejection or an ignored entry.

extract (binaryFile, recursive) -> transform (validate, normalise, deduplicate) -> load (Parquet per dt).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import pandas as pd
from pyspark.accumulators import Accumulator
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_spark import contract, images, storage
from fruits_spark.frames import driver_frame
from fruits_spark.layout import Layout

# 50 MB: far above any phone photo; bigger files are refused before their bytes are read
MAX_FILE_BYTES = 50 * 1024 * 1024
# Spark counts 4 MB per file when packing partitions, so 2,000 photos of 5-50 KB make 60+ tiny tasks;
# at 256 KB per file they pack into a few tasks per core, and a cluster still gets one task per core.
FILE_OPEN_COST_BYTES = 256 * 1024
# Up to this many read tasks per core: cores take tasks as they finish, so the last wave leaves a core idle
# for a fraction of a task, not for a fifth of the day (200 phone photos made 5 tasks on 2 cores: the fifth
# ran alone for 1.7 s).
TASKS_PER_CORE = 4
# ...but no fewer bytes of originals a task than this: a task costs ~10 ms of driver and executor CPU
# whatever it holds (the Hadoop conf it deserialises, its writers), more than a few thumbnails take to
# decode; 4 MB of phone photos decode in ~0.1 s a core.
MIN_TASK_BYTES = 4 * 1024 * 1024
# Bytes of originals per Arrow batch sent to a Python worker: Spark's 10,000 records a batch would be 25 GB
# of phone photos; 32 MB keeps a worker (batch, its pandas copy, decoders) well under 600 MB.
ARROW_BATCH_BYTES = 32 * 1024 * 1024

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
        T.StructField("content_hash", T.StringType()),
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
    # counts the files the UDF decodes: each exactly once, whatever the plan (tests and stats read it)
    rows_inspected: Accumulator | None = None
    # Local files are read by the Python worker that decodes them, from their path: binaryFile without its
    # content column reads no bytes, so each file is read once and neither the JVM nor Arrow copies it (the
    # JVM spent ~25 ms of CPU a phone photo doing so: docs/BENCHMARKS.md, round 7). Other file systems
    # (s3:// on EMR) are read by the JVM, whose Hadoop client the cluster has.
    read_files: bool = False


def read_tasks(listed_bytes: int, cores: int) -> int:
    """The read tasks a day gets (Spark's ``minPartitionNum``): ``TASKS_PER_CORE`` a core for a day that
    fills them with ``MIN_TASK_BYTES`` each, fewer for a small day, never fewer than one a core."""
    return max(cores, min(TASKS_PER_CORE * cores, -(-listed_bytes // MIN_TASK_BYTES)))


def records_per_batch(listed_bytes: int, listed_files: int) -> int:
    """Arrow records per batch for files of this mean size: ``ARROW_BATCH_BYTES`` of them, 1..10,000."""
    mean = listed_bytes / max(listed_files, 1)
    return max(1, min(10_000, int(ARROW_BATCH_BYTES // max(mean, 1))))


UNLISTED_SCHEMA = "path string, status string, reason string, detail string"


def extract(
    spark: SparkSession, input_uri: str, listing: list[storage.ListedFile]
) -> tuple[DataFrame, DataFrame | None]:
    """(files Spark reads, files its reader never yields or None): ``listing`` is every file under the input.

    Spark's file sources skip hidden files and zero-length files without a word: the Hadoop listing finds
    them so that they are accounted for too.
    """
    root = storage.qualify(spark, input_uri)
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
    # a day with nothing hidden nor empty needs no union
    unlisted_df = driver_frame(spark, unlisted, UNLISTED_SCHEMA) if unlisted else None
    if len(unlisted) == len(listing):
        return driver_frame(spark, [], BINARY_FILE_SCHEMA), unlisted_df
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(input_uri)
    return files, unlisted_df


def label_column(path: F.Column, input_root: str) -> F.Column:
    """The label is the parent folder's name; files directly under the input root are unlabelled."""
    parent = F.regexp_extract(path, r"^(.*)/[^/]*$", 1)
    return F.when(parent == F.lit(input_root.rstrip("/")), F.lit("unlabelled")).otherwise(
        F.element_at(F.split(path, "/"), -2)
    )


def read_local(uri: str, max_file_bytes: int) -> bytes | images.Inspection:
    """A listed local file's bytes, or why they cannot be used: it went, or it grew too large, since the
    listing."""
    try:
        with open(contract.local_path(uri), "rb") as stream:
            data = stream.read(max_file_bytes + 1)
    except OSError as error:
        return images.Inspection("unreadable", f"{type(error).__name__}: {error.strerror or error}"[:200])
    if len(data) > max_file_bytes:
        return images.Inspection("too_large", f"more than {max_file_bytes} bytes when read")
    return data


def inspect_source(source: bytes | str, params: IngestParams) -> images.Inspection:
    """``images.inspect_image`` of a file's bytes, or of the local file at this URI (``read_files``)."""
    data = read_local(source, params.max_file_bytes) if params.read_files else source
    if isinstance(data, images.Inspection):
        return data
    return images.inspect_image(data, params.max_pixels)


def _inspect_udf(params: IngestParams):
    @F.pandas_udf(INSPECTION_SCHEMA)
    def inspect(sources: pd.Series) -> pd.DataFrame:
        if params.rows_inspected is not None:
            params.rows_inspected.add(len(sources))
        rows = [inspect_source(source, params) for source in sources]
        return pd.DataFrame(
            {
                "reason": [r.reason for r in rows],
                "detail": [r.detail for r in rows],
                "content_hash": [r.content_hash for r in rows],
                "width": pd.array([r.width for r in rows], dtype="Int32"),
                "height": pd.array([r.height for r in rows], dtype="Int32"),
                "content": [r.content for r in rows],
            }
        )

    return inspect


def duplicates_of(inspected: DataFrame) -> DataFrame:
    """(path, kept_path) of every readable image whose original bytes an earlier path (by name) also has.

    Hashes travel, bytes do not: the ranking sees (path, hash) only, and the few duplicates found are
    broadcast back to the rows they name."""
    first_of_hash = Window.partitionBy("content_hash").orderBy("path")
    return (
        inspected.filter(F.col("reason").isNull())
        .select("path", "content_hash")
        .withColumn("rank", F.row_number().over(first_of_hash))
        .withColumn("kept_path", F.first("path").over(first_of_hash))
        .filter(F.col("rank") > 1)
        .select("path", "kept_path")
    )


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

    # One pass over the original bytes (hash, decode, pixels), checkpointed: the duplicate search below and
    # the outputs read its small result, and the originals are neither read twice nor shuffled
    inspected = (
        files.filter(is_image_name & size_ok)
        .select("path", _inspect_udf(params)("path" if params.read_files else "content").alias("i"))
        .select("path", "i.*")
        .localCheckpoint(eager=False)
    )
    marked = inspected.join(F.broadcast(duplicates_of(inspected)), "path", "left")
    is_duplicate = F.col("kept_path").isNotNull()
    classified = marked.select(
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


def check_paths(spark: SparkSession, input_uri: str, output_uri: str) -> list[storage.ListedFile]:
    """Every file under the input; SystemExit naming the fix, before anything is written, when the input is
    missing or empty or the output is a file."""
    if storage.is_file(spark, output_uri):
        raise SystemExit(f"ingest: --output {output_uri} is a file, not a folder: pass an output folder")
    fix = "pass --input a folder of images, one sub-folder per label"
    if not storage.exists(spark, input_uri):
        raise SystemExit(f"ingest: --input {input_uri} does not exist: {fix}")
    listing = storage.list_files(spark, input_uri)
    if not listing:
        raise SystemExit(f"ingest: --input {input_uri} holds no files: {fix}")
    return listing


def refuse_empty_day(stats: dict, input_uri: str) -> None:
    """A day without one usable image never replaces a day that had some: the run stops here, before the
    last step publishes anything."""
    if stats["ok"]:
        return
    reasons = {**stats["rejected_by_reason"], "duplicate": stats["duplicates"], "ignored": stats["ignored"]}
    found = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if n) or "nothing"
    raise SystemExit(
        f"ingest: no usable image under --input {input_uri} ({found}); the day's outputs were left as they "
        f"were: check --input and --dt (the reasons per file are in the Spark log)"
    )


def parser() -> argparse.ArgumentParser:
    parser = contract.step_parser("ingest", "Ingest fruit images into curated Parquet.")
    parser.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-ingest").getOrCreate()
    spark.conf.set("spark.sql.files.openCostInBytes", str(FILE_OPEN_COST_BYTES))
    listing = check_paths(spark, args.input, args.output)
    layout = Layout(args.output, args.dt, staged=True)
    listed_bytes = sum(listed.length for listed in listing)
    spark.conf.set(
        "spark.sql.files.minPartitionNum",
        str(read_tasks(listed_bytes, spark.sparkContext.defaultParallelism)),
    )
    files, unlisted = extract(spark, args.input, listing)
    spark.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", str(records_per_batch(listed_bytes, len(listing)))
    )
    root = storage.qualify(spark, args.input)
    params = IngestParams(
        root,
        args.max_file_bytes,
        rows_inspected=spark.sparkContext.accumulator(0),
        read_files=contract.local_path(root) is not None,
    )
    stats = load(transform(files, params, unlisted), layout)
    refuse_empty_day(stats, args.input)
    # the listing is the ground truth: a file classified nowhere shows up here as a mismatch
    stats.update(
        step="ingest",
        input=args.input,
        files_seen=len(listing),
        bytes_seen=listed_bytes,
        files_decoded=params.rows_inspected.value,
        seconds=round(time.monotonic() - started, 2),
    )
    storage.write_stats(spark, layout, "ingest", stats)
    print(
        f"ingest: {stats['ok']} ok, {stats['rejected']} rejected, {stats['duplicates']} duplicates, "
        f"{stats['ignored']} ignored of {stats['files_seen']} files"
    )
