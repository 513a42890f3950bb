"""Step 3, PCA: 1280 features -> k components with Spark ML, a versioned model, Parquet + CSV outputs.

Scheduled runs apply the current model so that components stay comparable from day to day; ``--refit``
(or a first run, or a different k) fits a new version on all features seen so far. Models and refits are
per embedding (weights and input size): features of another embedding live in another space.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass

from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_spark import contract, report, storage
from fruits_spark.layout import Layout


@dataclass(frozen=True)
class PcaParams:
    k: int = 100


def extract(spark: SparkSession, features_uri: str) -> DataFrame:
    return spark.read.parquet(features_uri).select("path", "label", "features")


def as_vectors(features: DataFrame) -> DataFrame:
    return features.select("path", "label", array_to_vector("features").alias("vector"))


def fit(features: DataFrame, params: PcaParams) -> PCAModel:
    return PCA(k=params.k, inputCol="vector", outputCol="projected").fit(as_vectors(features))


def transform(features: DataFrame, pca_model: PCAModel) -> DataFrame:
    projected = pca_model.transform(as_vectors(features))
    return projected.select("path", "label", vector_to_array("projected", "float32").alias("pca"))


def as_csv_matrix(projected: DataFrame, k: int) -> DataFrame:
    return projected.select("path", "label", *[F.col("pca")[i].alias(f"pc_{i + 1}") for i in range(k)])


def embedding_of(features: DataFrame) -> str:
    return features.select("embedding").first()["embedding"]


def current_model_version(spark: SparkSession, models_uri: str, embedding: str) -> str | None:
    versions = [
        name
        for name in storage.list_dirs(spark, models_uri)
        if name.startswith("v=") and name.endswith(f"-{embedding}")
    ]
    return max(versions) if versions else None


def features_seen(spark: SparkSession, layout: Layout, embedding: str) -> DataFrame:
    # days written before features carried their embedding have none and are left out
    every_day = spark.read.option("mergeSchema", "true").parquet(layout.root("features"))
    return every_day.filter(F.col("embedding") == embedding).select("path", "label", "features")


def fit_or_load(
    spark: SparkSession, layout: Layout, params: PcaParams, refit: bool, embedding: str
) -> tuple[PCAModel, str, str]:
    """(model, version, why) where why says whether it was fitted now or reused."""
    version = current_model_version(spark, layout.pca_models, embedding)
    if version and not refit:
        existing = PCAModel.load(f"{layout.pca_models}/{version}")
        if existing.getK() == params.k:
            return existing, version, "applied"
        why = f"k_changed_from_{existing.getK()}"
    elif refit:
        why = "refit"
    else:
        why = "first_fit"
    # a refit learns from every day seen so far, not only from this run's uploads
    fitted = fit(features_seen(spark, layout, embedding), params)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    version = f"v={stamp}-k{params.k}-{embedding}"
    fitted.write().overwrite().save(f"{layout.pca_models}/{version}")
    return fitted, version, why


def load(projected: DataFrame, layout: Layout, k: int) -> int:
    projected.write.mode("overwrite").parquet(layout.dataset("pca"))
    written = projected.sparkSession.read.parquet(layout.dataset("pca"))
    # a single CSV file: it is the hand-off to people and tools outside Spark
    as_csv_matrix(written, k).coalesce(1).write.mode("overwrite").option("header", True).csv(
        layout.dataset("pca_csv")
    )
    return written.count()


def parser() -> argparse.ArgumentParser:
    return contract.step_parser("pca", "Reduce features with PCA (Spark ML) and write the run report.")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-pca").getOrCreate()
    layout = Layout(args.output, args.dt)
    params = PcaParams(args.k)
    features = extract(spark, layout.dataset("features"))
    if features.isEmpty():
        stats = {"ok": 0, "k": args.k, "model_version": None, "model": "none: no features this run"}
        projected = None
    else:
        embedding = embedding_of(spark.read.parquet(layout.dataset("features")))
        pca_model, version, why = fit_or_load(spark, layout, params, args.refit, embedding)
        n_projected = load(transform(features, pca_model), layout, args.k)
        stats = {
            "ok": n_projected,
            "k": args.k,
            "model_version": version,
            "model": why,
            "embedding": embedding,
            "explained_variance": [float(v) for v in pca_model.explainedVariance.toArray()],
        }
        projected = spark.read.parquet(layout.dataset("pca"))
    stats.update(step="pca", seconds=round(time.monotonic() - started, 2))
    storage.write_stats(spark, layout, "pca", stats)
    summary = report.build_summary(
        layout.dt, {step: storage.read_stats(spark, layout, step) for step in contract.STEP_NAMES}
    )
    report.write_report(spark, layout, summary, projected)
    print(f"pca: {stats['ok']} rows projected to k={args.k} ({stats['model']}); report at {layout.report()}")
