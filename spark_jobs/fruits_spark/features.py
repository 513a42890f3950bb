"""Step 2, features: MobileNetV2 embeddings (1280 floats) of every curated image.

The driver reads and checks the model once and broadcasts it; each Python worker builds its engine once
from the broadcast value and reuses it for every batch of every task it runs (iterator pandas UDF).
The engine is a record of ``contract.ENGINES`` and one module of ``fruits_spark.engines``, asked for both
parts: ``onnx`` (default: the exported model in ONNX Runtime, no TensorFlow in the workers) and
``tensorflow`` (the Keras reference). Both compute the same embedding (cosine >= 0.9999, tested), so the
engine is not part of the embedding id.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import time
import uuid
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

from fruits_spark import contract, images, model, reuse, storage
from fruits_spark.layout import Layout
from fruits_spark.progress import Progress

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
    # the broadcast value the engine's ``prepare`` made, which its ``build`` reads in each worker
    weights: Broadcast
    weights_digest: str
    input_size: int = 224
    batch_size: int = 64
    threads: int = 1
    model_builds: Accumulator | None = None
    rows_inferred: Accumulator | None = None
    engine: str = "onnx"

    @property
    def engine_module(self) -> str:
        # read on the driver, where the records are: a worker imports the module it names, and needs no
        # record (a registered engine's included)
        return contract.engine_record(self.engine).module

    @property
    def embedding(self) -> str:
        return model.embedding_id(self.weights_digest, self.input_size)


def featurize_batch(contents: pd.Series, infer, input_size: int, batch_size: int) -> pd.DataFrame:
    """Decode, preprocess and embed one Arrow batch, ``batch_size`` images at a time (the decoded pixels of
    a whole Arrow batch were 150 MB a worker); a bad image fails alone, never the batch."""
    rows = list(enumerate(contents))
    features: list[np.ndarray | None] = [None] * len(rows)
    errors: list[str | None] = [None] * len(rows)
    for start in range(0, len(rows), batch_size):
        pixels = {}
        for i, data in rows[start : start + batch_size]:
            try:
                pixels[i] = images.preprocess(images.decode_rgb(data, input_size))
            except Exception as error:
                errors[i] = f"{type(error).__name__}: {error}"[:200]
        if not pixels:
            continue
        try:
            embedded = list(infer(np.stack(list(pixels.values()))))
        except Exception:
            # one image the engine refuses must not cost its batch: the rest are embedded one by one
            embedded = []
            for i, one in pixels.items():
                try:
                    embedded.append(infer(one[np.newaxis])[0])
                except Exception as error:
                    embedded.append(None)
                    errors[i] = f"inference: {type(error).__name__}: {error}"[:200]
        for i, row in zip(pixels, embedded, strict=True):
            features[i] = None if row is None else row.astype(np.float32)
    return pd.DataFrame({"features": features, "error": errors})


def _build_engine(params: FeatureParams, module: str) -> model.Infer:
    """Runs in the Python worker, after Spark forked it: a session's thread pool would not survive a fork."""
    engine = importlib.import_module(module)
    return engine.build(params.weights.value, params.input_size, params.threads)


def _featurize_udf(params: FeatureParams):
    # One engine per worker and transform: a reused worker that ran another transform (tests, notebooks)
    # builds again from this transform's broadcast, so model_builds counts this transform's builds
    key = (params.engine, params.embedding, uuid.uuid4().hex)
    module = params.engine_module

    @F.pandas_udf(RESULT_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        infer, built = model.worker_model(key, lambda: _build_engine(params, module))
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


def broadcast_model(spark: SparkSession, args: argparse.Namespace) -> tuple[Broadcast, str]:
    engine = contract.engine_record(args.engine)
    # the driver runs in the executors' environment (EMR: one virtualenv): say it now, not in a task
    if engine.needs_tensorflow and importlib.util.find_spec("tensorflow") is None:
        raise model.WeightsUnavailable(
            f"--engine {engine.name} needs TensorFlow, not installed here "
            f"(EMR: bootstrap with {engine.requirements})"
        )
    return engine.load().prepare(spark, args)


def parser() -> argparse.ArgumentParser:
    parser = contract.step_parser("features", "Extract MobileNetV2 features from curated images.")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-features").getOrCreate()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size * 4))
    layout = Layout(args.output, args.dt, staged=True)
    try:
        weights, digest = broadcast_model(spark, args)
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
        engine=args.engine,
    )
    reused = reuse.plan(spark, layout, params.embedding, args.recompute)
    curated = extract(spark, layout.dataset("images"), reuse.skip_hashes(reused))
    # nothing left to infer: no UDF at all, so no worker imports TensorFlow or builds the model
    featurized = transform(curated, params) if reused.n_to_infer else reuse.as_featurized(reused).limit(0)
    print(f"features: {reused.n_to_infer} images to embed with {args.engine}, {reused.n_reused} reused")
    # a day that reuses nothing writes the UDF's partitions alone: the empty reused frame's would each be
    # one more task, with its Hadoop conf and writer, in every job below
    if reused.n_reused:
        featurized = featurized.unionByName(reuse.as_featurized(reused))
    # Spark merges the accumulator as tasks finish: progress lines while the outputs are written
    with Progress("features", reused.n_to_infer, lambda: params.rows_inferred.value):
        stats = load(featurized, layout, params.embedding)
    if not stats["ok"]:
        # like an empty ingest: a day without one feature row never replaces a day that had some
        raise SystemExit(
            f"features: no image could be embedded ({stats['rejected']} failed, reasons in "
            f"{layout.rejected('features')}); the day's outputs were left as they were"
        )
    stats.update(
        featurised=stats["ok"] - reused.n_reused,
        reused=reused.n_reused,
        reused_from=reused.reused_from,
        history=reused.history,
        rejected_by_reason={"featurization_failed": stats["rejected"]} if stats["rejected"] else {},
        step="features",
        engine=args.engine,
        engine_artifact=args.engine_artifact,
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
    storage.write_stats(spark, layout, "features", stats)
    print(
        f"features: {stats['ok']} embedded ({stats['reused']} reused, history {stats['history']}), "
        f"{stats['rejected']} failed, "
        f"{stats['model_builds']} {args.engine} model builds over {stats['partitions']} partitions"
    )
