"""Step 2, features: MobileNetV2 embeddings (1280 floats) of every curated image.

The driver reads and checks the weights file once and broadcasts it; each Python worker rebuilds the model
once from the broadcast value and reuses it for every batch of every task it runs (iterator pandas UDF).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.accumulators import Accumulator
from pyspark.broadcast import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_spark import images, model, reuse, storage
from fruits_spark.layout import Layout, write_stats
from fruits_spark.session import base_parser, spark_session

RESULT_SCHEMA = T.StructType(
    [
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("error", T.StringType()),
    ]
)
# Many small images per task keep per-task overhead low; a few tasks per core keep every core busy.
ROWS_PER_PARTITION = 512


@dataclass(frozen=True)
class FeatureParams:
    weights: Broadcast
    weights_digest: str
    input_size: int = 224
    batch_size: int = 64
    threads: int = 1
    model_builds: Accumulator | None = None
    rows_inferred: Accumulator | None = None

    @property
    def embedding(self) -> str:
        return model.embedding_id(self.weights_digest, self.input_size)


def featurize_batch(contents: pd.Series, infer, input_size: int, batch_size: int) -> pd.DataFrame:
    """Decode, preprocess and embed one Arrow batch; a bad image fails alone, never the batch."""
    pixels, errors = [], []
    for data in contents:
        try:
            pixels.append(images.preprocess(images.decode_rgb(data, input_size)))
            errors.append(None)
        except Exception as error:
            pixels.append(None)
            errors.append(f"{type(error).__name__}: {error}"[:200])
    good = [i for i, p in enumerate(pixels) if p is not None]
    features: list[np.ndarray | None] = [None] * len(pixels)
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        embedded = infer(np.stack([pixels[i] for i in chunk]))
        for i, row in zip(chunk, embedded, strict=True):
            features[i] = row.astype(np.float32)
    return pd.DataFrame({"features": features, "error": errors})


def _featurize_udf(params: FeatureParams):
    key = (params.weights_digest, params.input_size)

    @F.pandas_udf(RESULT_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        infer, built = model.worker_model(key, lambda: params.weights.value, params.threads)
        if built and params.model_builds is not None:
            params.model_builds.add(1)
        for contents in batches:
            if params.rows_inferred is not None:
                params.rows_inferred.add(len(contents))
            yield featurize_batch(contents, infer, params.input_size, params.batch_size)

    return featurize


def extract(spark: SparkSession, images_uri: str, skip_hashes: DataFrame | None = None) -> DataFrame:
    curated = spark.read.parquet(images_uri).select("path", "label", "content_hash", "content")
    if skip_hashes is not None:
        # images whose features are reused from an earlier run never reach the CNN
        curated = curated.join(skip_hashes, "content_hash", "left_anti").select(
            "path", "label", "content_hash", "content"
        )
    # the ingest output is a handful of files: spread it so that every core gets a share
    partitions = max(spark.sparkContext.defaultParallelism, math.ceil(curated.count() / ROWS_PER_PARTITION))
    return curated.repartition(partitions)


def transform(curated: DataFrame, params: FeatureParams) -> DataFrame:
    return curated.select(
        "path", "label", "content_hash", _featurize_udf(params)("content").alias("r")
    ).select("path", "label", "content_hash", "r.features", "r.error")


def load(featurized: DataFrame, layout: Layout, embedding: str) -> dict:
    # persisted so that the UDF runs once although two outputs are written
    featurized.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        featurized.filter(F.col("error").isNull()).select(
            "path", "label", "content_hash", "features", F.lit(embedding).alias("embedding")
        ).write.mode("overwrite").parquet(layout.dataset("features"))
        failed = featurized.filter(F.col("error").isNotNull()).select(
            "path", F.lit("featurization_failed").alias("reason"), F.col("error").alias("detail")
        )
        failed.write.mode("overwrite").parquet(layout.rejected("features"))
        n_failed = failed.count()
        n_total = featurized.count()
    finally:
        featurized.unpersist()
    return {"ok": n_total - n_failed, "rejected": n_failed}


def broadcast_weights(spark: SparkSession, weights: str, input_size: int) -> tuple[Broadcast, str]:
    local = None if weights == "imagenet" else storage.fetch_to_local(spark, weights)
    weights_file = model.read_weights(weights, input_size, local)
    return spark.sparkContext.broadcast(weights_file), weights_file.digest


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("Extract MobileNetV2 features from curated images.")
    parser.add_argument("--weights", default="imagenet", help="imagenet, or a .weights.h5 path/URI")
    parser.add_argument("--input-size", type=int, default=224, choices=images.INPUT_SIZES)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--recompute", action="store_true", help="infer every image, reuse no earlier row")
    args = parser.parse_args(argv)
    started = time.monotonic()
    spark = spark_session("fruits-features")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size * 4))
    layout = Layout(args.output, args.dt)
    try:
        weights, digest = broadcast_weights(spark, args.weights, args.input_size)
    except (model.WeightsUnavailable, FileNotFoundError) as error:
        raise SystemExit(f"features: {error}") from None
    params = FeatureParams(
        weights,
        digest,
        args.input_size,
        args.batch_size,
        threads=int(spark.conf.get("spark.task.cpus", "1")),
        model_builds=spark.sparkContext.accumulator(0),
        rows_inferred=spark.sparkContext.accumulator(0),
    )
    reused = reuse.plan(spark, layout, params.embedding, args.recompute)
    curated = extract(spark, layout.dataset("images"), reuse.skip_hashes(reused))
    # nothing left to infer: no UDF at all, so no worker imports TensorFlow or builds the model
    featurized = transform(curated, params) if reused.n_to_infer else reuse.as_featurized(reused).limit(0)
    stats = load(featurized.unionByName(reuse.as_featurized(reused)), layout, params.embedding)
    stats.update(
        featurised=stats["ok"] - reused.n_reused,
        reused=reused.n_reused,
        reused_from=reused.reused_from,
        history=reused.history,
        step="features",
        weights=args.weights,
        weights_digest=digest,
        input_size=args.input_size,
        embedding=params.embedding,
        partitions=curated.rdd.getNumPartitions(),
        model_builds=params.model_builds.value,
        rows_inferred=params.rows_inferred.value,
        seconds=round(time.monotonic() - started, 2),
    )
    # last: `curated` (its partition count above) is planned against the staged copy this removes
    reuse.finish(spark, layout)
    write_stats(spark, layout, "features", stats)
    print(
        f"features: {stats['ok']} embedded ({stats['reused']} reused, history {stats['history']}), "
        f"{stats['rejected']} failed, "
        f"{stats['model_builds']} model builds over {stats['partitions']} partitions"
    )
