"""Step 3, PCA: 1280 features -> k components with Spark ML, a versioned model, Parquet + CSV outputs.

Scheduled runs apply the current model so that components stay comparable from day to day; ``--refit``
(or a first run, or a different k) fits a new version on all features seen so far. Models and refits are
per embedding (weights and input size): features of another embedding live in another space.

A model is kept for later days only if it deserves it (``unfit_reason``): fitted on at least
max(k, MIN_FIT_ROWS) rows, with at most half of its components numerically zero. Until the features seen
reach that, each day is projected with a model fitted on that day alone, marked provisional in the report
and never saved: one small first day cannot become the basis every later day is projected with.
Its stats give, next to the fit's explained variance, the variance the model explains on the day's data;
the run's last stage (``fruits_spark.publish``) puts them in the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from dataclasses import dataclass

from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_spark import contract, storage
from fruits_spark.layout import Layout

# a model later days apply is fitted on at least max(k, MIN_FIT_ROWS) rows: fewer describe one batch's
# noise in 1280 dimensions, not the photos to come
MIN_FIT_ROWS = 30
# a component explaining less than this share of the variance is rounding noise (1e-16 measured on a
# 6-image fit with k=100)
ZERO_VARIANCE = 1e-9
# written next to a saved model: the rows it was fitted on
FIT_RECORD = "fit.json"
# the day's matrix, one CSV file under pca_csv/dt=D/: a name people and tools can type, not Spark's part-*
CSV_NAME = "pca.csv"


@dataclass(frozen=True)
class PcaParams:
    k: int = 100


def extract(spark: SparkSession, features_uri: str) -> DataFrame:
    return spark.read.parquet(features_uri).select("path", "label", "features")


def as_vectors(features: DataFrame) -> DataFrame:
    return features.select("path", "label", array_to_vector("features").alias("vector"))


def fit(features: DataFrame, params: PcaParams) -> PCAModel:
    return PCA(k=params.k, inputCol="vector", outputCol="projected").fit(as_vectors(features))


def transform(
    features: DataFrame, pca_model: PCAModel, version: str, components: int | None = None
) -> DataFrame:
    """Each row names the model version that made it: a refit changes the space, consumers must see it.

    ``components``: the first ones only (``meaningful``); the model's others carry no variance."""
    projected = pca_model.transform(as_vectors(features))
    pca = vector_to_array("projected", "float32")
    if components is not None and components < pca_model.getK():
        pca = F.slice(pca, 1, components)
    return projected.select("path", "label", pca.alias("pca"), F.lit(version).alias("pca_model_version"))


def meaningful(variance: list[float]) -> int:
    """How many leading components carry variance. Beyond the rank of the rows a model was fitted on (the
    demo's k=100 on 40 images: 39) Spark ML still returns k, all zeros: a zero column reads as a real
    component to pandas or scikit-learn (and a standardised one is NaN), so they are left out, as the
    column of a component that does not exist. The dataset's schema stays ``pca array<float>``."""
    kept = 0
    for value in variance:  # sorted: the zero ones are the last
        if value < ZERO_VARIANCE:
            break
        kept += 1
    return max(kept, 1)


def as_csv_matrix(projected: DataFrame, k: int) -> DataFrame:
    return projected.select("path", "label", *[F.col("pca")[i].alias(f"pc_{i + 1}") for i in range(k)])


def write_csv(frame: DataFrame, spark: SparkSession, folder: str) -> str:
    """``frame`` as ``<folder>/pca.csv``: Spark writes one part file, which is renamed through Hadoop's
    FileSystem (a rename on file://, a copy and delete on s3://); Spark's _SUCCESS and checksums go."""
    scratch = f"{folder}/_spark"
    frame.coalesce(1).write.mode("overwrite").option("header", True).csv(scratch)
    (part,) = [
        f.uri for f in storage.list_files(spark, scratch) if f.uri.rsplit("/", 1)[-1].startswith("part-")
    ]
    target = f"{folder}/{CSV_NAME}"
    storage.delete(spark, target)
    storage.move(spark, part, target)
    storage.delete(spark, scratch)
    return target


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
    """This day's features (staged while the run runs) and every other day's published ones."""
    root, today = layout.root("features"), f"dt={layout.dt}"
    seen = spark.read.parquet(layout.dataset("features")).filter(F.col("embedding") == embedding)
    seen = seen.select("path", "label", "features")
    other_days = [name for name in storage.list_dirs(spark, root) if name.startswith("dt=") and name != today]
    if other_days:
        # days written before features carried their embedding have none and are left out
        earlier = spark.read.option("mergeSchema", "true").parquet(*[f"{root}/{day}" for day in other_days])
        if "embedding" in earlier.columns:
            seen = seen.unionByName(
                earlier.filter(F.col("embedding") == embedding).select("path", "label", "features")
            )
    return seen


def unfit_reason(rows: int | None, k: int, variance: list[float]) -> str | None:
    """Why a fit must not be applied to later days, or None when it may. ``rows`` None: not recorded."""
    needed = max(k, MIN_FIT_ROWS)
    if rows is not None and rows < needed:
        return f"fitted on {rows} rows; a model later days apply needs {needed} (max(k, {MIN_FIT_ROWS}))"
    zero = sum(1 for value in variance if value < ZERO_VARIANCE)
    if 2 * zero > k:
        return f"{zero} of its {k} components carry no variance: lower k, or wait for more images"
    return None


@dataclass(frozen=True)
class Fit:
    model: PCAModel
    version: str | None  # None: provisional, fitted on this day alone and saved nowhere
    why: str  # applied, first_fit, refit, k_changed_from_N, provisional
    rows: int | None  # rows the model was fitted on (None: a model saved before this was recorded)
    note: str = ""  # why a fit is provisional

    @property
    def explained_variance(self) -> list[float]:
        return [float(v) for v in self.model.explainedVariance.toArray()]


def _saved(spark: SparkSession, layout: Layout, version: str) -> Fit:
    folder = f"{layout.pca_models}/{version}"
    record = f"{folder}/{FIT_RECORD}"
    rows = json.loads(storage.read_bytes(spark, record))["rows"] if storage.exists(spark, record) else None
    return Fit(PCAModel.load(folder), version, "applied", rows)


def fit_or_load(spark: SparkSession, layout: Layout, params: PcaParams, refit: bool, embedding: str) -> Fit:
    """The model this day is projected with: the current version, a new one, or a provisional fit."""
    version = current_model_version(spark, layout.pca_models, embedding)
    why = "refit" if refit else "first_fit"
    if version and not refit:
        existing = _saved(spark, layout, version)
        if existing.model.getK() == params.k and not unfit_reason(
            existing.rows, params.k, existing.explained_variance
        ):
            return existing
        k_changed = existing.model.getK() != params.k
        why = f"k_changed_from_{existing.model.getK()}" if k_changed else "replaced_unfit_model"
    # a refit learns from every day seen so far, not only from this run's uploads
    seen = features_seen(spark, layout, embedding).cache()
    rows = seen.count()
    fitted = fit(seen, params)
    seen.unpersist()
    note = unfit_reason(rows, params.k, [float(v) for v in fitted.explainedVariance.toArray()])
    if note:
        today = spark.read.parquet(layout.dataset("features")).filter(F.col("embedding") == embedding)
        day_rows = today.count()
        if day_rows != rows:
            fitted = fit(today.select("path", "label", "features"), params)
        kept = f"fitted on this day's {day_rows} rows and kept for no other day ({why} refused: {note})"
        return Fit(fitted, None, contract.PROVISIONAL_MODEL, day_rows, kept)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    version = f"v={stamp}-k{params.k}-{embedding}"
    fitted.write().overwrite().save(f"{layout.pca_models}/{version}")
    record = {"rows": rows, "dt": layout.dt, "explained_variance": sum(fitted.explainedVariance.toArray())}
    storage.write_bytes(spark, f"{layout.pca_models}/{version}/{FIT_RECORD}", json.dumps(record).encode())
    return Fit(fitted, version, why, rows)


def explained_on(features: DataFrame, pca_model: PCAModel) -> list[float]:
    """The share of ``features``' total variance each component holds: the applied model's figure on the
    day's own data (a fit's own figures describe the rows it was fitted on)."""
    projected = pca_model.transform(as_vectors(features))
    row = projected.select(
        Summarizer.variance(F.col("vector")).alias("total"),
        Summarizer.variance(F.col("projected")).alias("pc"),
    ).first()
    total = float(sum(row["total"].toArray()))
    return [float(v) / total if total > 0 else 0.0 for v in row["pc"].toArray()]


def load(projected: DataFrame, layout: Layout, k: int) -> int:
    """``k``: the components each row holds (``meaningful``), the CSV's pc_1..pc_k."""
    projected.write.mode("overwrite").parquet(layout.dataset("pca"))
    spark = projected.sparkSession
    written = spark.read.parquet(layout.dataset("pca"))
    # a single CSV file: it is the hand-off to people and tools outside Spark
    storage.delete(spark, layout.dataset("pca_csv"))
    write_csv(as_csv_matrix(written, k), spark, layout.dataset("pca_csv"))
    return written.count()


def parser() -> argparse.ArgumentParser:
    return contract.step_parser("pca", "Reduce features with PCA (Spark ML).")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-pca").getOrCreate()
    layout = Layout(args.output, args.dt, staged=True)
    if not storage.exists(spark, layout.dataset("features")):
        raise SystemExit(
            f"pca: no features staged for dt={args.dt} under {args.output}: run ingest and features first"
        )
    features = extract(spark, layout.dataset("features"))
    embedding = embedding_of(spark.read.parquet(layout.dataset("features")))
    chosen = fit_or_load(spark, layout, PcaParams(args.k), args.refit, embedding)
    components = meaningful(chosen.explained_variance)
    version = chosen.version or contract.PROVISIONAL_MODEL
    stats = {
        "ok": load(transform(features, chosen.model, version, components), layout, components),
        "k": args.k,
        "components": components,
        "pca_model_version": chosen.version,
        "pca_model": chosen.why,
        "pca_model_note": chosen.note,
        "pca_fit_rows": chosen.rows,
        "embedding": embedding,
        "explained_variance": chosen.explained_variance,
        "explained_variance_on_day": explained_on(features, chosen.model),
    }
    stats.update(step="pca", seconds=round(time.monotonic() - started, 2))
    storage.write_stats(spark, layout, "pca", stats)
    print(f"pca: {stats['ok']} rows projected to k={args.k} ({stats['pca_model']})")
    if components < args.k:
        print(
            f"pca: only {components} of the k={args.k} components carry variance (the rank of the rows "
            f"the model was fitted on): pca holds {components} values a row, {CSV_NAME} "
            f"pc_1..pc_{components}; "
            f"pc_{components + 1}..pc_{args.k} would be zeros and are left out (lower --k, or add images)"
        )
