"""``fruits bench --pca-rows`` and ``--history-rows``: Spark-side timings on synthetic data (PCA fit, the
features step's reuse lookup), each in an in-process local Spark session."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fruits_platform.local.spark_settings import LOCAL_MASTER
from fruits_spark.layout import Layout


def local_spark(driver_memory: str, **conf: str):
    """An in-process local Spark session without UI."""
    from pyspark.sql import SparkSession

    # in-process Spark starts its Python workers with PYSPARK_PYTHON, not with this interpreter
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(LOCAL_MASTER)
        .config("spark.driver.memory", driver_memory)
        .config("spark.ui.enabled", "false")
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def pca_fit_time(rows: int, work: Path) -> dict:
    """Fit time of Spark ML PCA (k=100) on ``rows`` synthetic 1280-d features (low rank + noise)."""
    import numpy as np
    import pandas as pd

    from fruits_spark.pca import PcaParams, fit

    spark = local_spark(driver_memory="6g")

    def synthesize(batches):
        for batch in batches:
            rng = np.random.default_rng(int(batch["id"].iloc[0]))
            latent = rng.normal(size=(len(batch), 32)) @ rng.normal(size=(32, 1280))
            values = (latent + rng.normal(scale=0.1, size=latent.shape)).astype(np.float32)
            yield pd.DataFrame({"path": batch["id"].astype(str), "label": "x", "features": list(values)})

    folder = work / f"synthetic_features_{rows}"
    if not (folder / "_SUCCESS").exists():
        spark.range(rows, numPartitions=16).mapInPandas(
            synthesize, "path string, label string, features array<float>"
        ).write.mode("overwrite").parquet(str(folder))
    features = spark.read.parquet(str(folder))
    started = time.monotonic()
    fit(features, PcaParams(100))
    seconds = round(time.monotonic() - started, 1)
    spark.stop()
    return {"rows": rows, "seconds": seconds}


HISTORY_EMBEDDING = "benchweights0000-s224"


def _content_hash(i: int) -> str:
    import hashlib

    return hashlib.sha256(str(i).encode()).hexdigest()


def _synthetic_features(batches):
    import numpy as np
    import pandas as pd

    for batch in batches:
        rng = np.random.default_rng(int(batch["id"].iloc[0]))
        values = rng.normal(size=(len(batch), 1280)).astype(np.float32)
        yield pd.DataFrame(
            {
                "path": "s3://b/uploads/" + batch["id"].astype(str) + ".jpg",
                "label": "x",
                "content_hash": [_content_hash(i) for i in batch["id"]],
                "features": list(values),
            }
        )


def _write_history(spark, output: Path, rows: int, days: int) -> None:
    """``rows`` synthetic feature rows over ``days`` complete, indexed partitions (once per folder)."""
    from pyspark.sql import functions as F

    from fruits_spark import reuse

    marker = output / "_bench_ready"
    if marker.exists():
        return
    per_day = rows // days
    for d in range(days):
        layout = Layout(str(output), f"2025-01-{d + 1:02d}")
        spark.range(d * per_day, (d + 1) * per_day, numPartitions=2).mapInPandas(
            _synthetic_features, "path string, label string, content_hash string, features array<float>"
        ).withColumn("embedding", F.lit(HISTORY_EMBEDDING)).write.mode("overwrite").parquet(
            layout.dataset("features")
        )
        reuse.write_index(spark, layout)
    marker.write_text(json.dumps({"rows": rows, "days": days}))


def _measure_lookup(spark, output: Path, today: Layout, seen: list[str], new: list[str]) -> dict:
    """One day of uploads (``seen`` hashes already in the history, ``new`` ones not): the index lookup, the
    whole ``reuse.plan``, and a scan of the whole feature history for comparison."""
    from pyspark.sql import functions as F

    from fruits_spark import reuse

    spark.createDataFrame(
        [(f"s3://b/today/{h}.jpg", "x", h, bytearray(b"png")) for h in seen + new],
        "path string, label string, content_hash string, content binary",
    ).write.mode("overwrite").parquet(today.dataset("images"))
    hashes = spark.read.parquet(today.dataset("images")).select("content_hash")
    # warm-up: JVM, file listings and OS cache alike for all three
    reuse.plan(spark, today, HISTORY_EMBEDDING)

    started = time.monotonic()
    indexed, unindexed = reuse.history_days(spark, today)
    index = reuse.read_index(spark, today, indexed, unindexed)
    matched = reuse.find_matches(index, hashes, HISTORY_EMBEDDING).count()
    lookup = time.monotonic() - started
    started = time.monotonic()
    plan = reuse.plan(spark, today, HISTORY_EMBEDDING)
    whole = time.monotonic() - started
    started = time.monotonic()
    # the naive way: every stored feature row read, then matched
    spark.read.parquet(str(output / "features")).filter(F.col("embedding") == HISTORY_EMBEDDING).join(
        hashes, "content_hash", "left_semi"
    ).select("content_hash", "features").write.format("noop").mode("overwrite").save()
    full_scan = time.monotonic() - started
    return {
        "matched": matched,
        "reused": plan.n_reused,
        "partitions_read_for_features": len(plan.reused_from),
        "index_lookup_seconds": round(lookup, 2),
        "plan_seconds": round(whole, 2),
        "full_scan_seconds": round(full_scan, 2),
    }


def history_lookup_time(rows: int, work: Path, days: int = 20, today_images: int = 1000) -> dict:
    """Times the features step's reuse lookup against ``rows`` synthetic historical feature rows.

    ``rows`` rows of 1280 floats spread over ``days`` complete partitions, each with its index, and a day of
    ``today_images`` uploads, half of them seen before. Measured: the index lookup alone, the whole
    ``reuse.plan`` (lookup, fetch of the matched rows from their partitions only, staged copy), and for
    comparison a scan of the whole feature history semi-joined with the same hashes.
    """
    spark = local_spark(driver_memory="4g", **{"spark.sql.shuffle.partitions": "8"})
    output = work / f"history_{rows}"
    _write_history(spark, output, rows, days)
    half = today_images // 2
    per_day = rows // days
    new = [_content_hash(rows + i) for i in range(today_images - half)]
    figures = {
        # worst case for the fetch: the photos seen before are spread over every day of the history
        "spread": _measure_lookup(
            spark,
            output,
            Layout(str(output), "2025-12-30"),
            [_content_hash(i) for i in range(0, rows, rows // half)][:half],
            new,
        ),
        # re-uploads of yesterday's photos: one partition holds every match
        "recent": _measure_lookup(
            spark,
            output,
            Layout(str(output), "2025-12-31"),
            [_content_hash(rows - per_day + i) for i in range(half)],
            new,
        ),
    }
    spark.stop()
    return {"history_rows": rows, "days": days, "today_images": today_images, **figures}


def history(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    figures = history_lookup_time(args.history_rows, work)
    for scenario in ("spread", "recent"):
        measured = figures[scenario]
        print(
            f"reuse lookup, {scenario}: {figures['history_rows']:,} historical rows in {figures['days']} "
            f"days, {figures['today_images']} uploads ({measured['matched']} seen before, in "
            f"{measured['partitions_read_for_features']} partitions): index lookup "
            f"{measured['index_lookup_seconds']} s, "
            f"whole plan with staged copy {measured['plan_seconds']} s; "
            f"scanning the whole feature history instead {measured['full_scan_seconds']} s"
        )
    (work / f"history_{args.history_rows}.json").write_text(json.dumps(figures, indent=2))
    return 0
