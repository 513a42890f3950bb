"""Step 3, quality: near-duplicates, suspicious labels and drift between days, from the day's embeddings.

The 1280-d features are L2-normalised: the dot product of two is their cosine (and their Euclidean
distance d says the same, d^2 = 2 (1 - cos)).

- **Near-duplicates**: pairs of different photos (different ``content_hash``) whose cosine reaches
  ``--near-duplicate-similarity``, within the day and against its history. A locality-sensitive hash
  (bands of sign random projections) puts each photo in one bucket per band; the members of a bucket are
  compared with each other on the executors (one matrix product per bucket, a photo's 10 most similar
  partners kept), never all pairs. Groups (connected components of the pairs) are counted on the driver
  from the pairs streamed a partition at a time.
- **Suspicious labels**: each photo of the day against every label's centroid (the mean of unit vectors of
  the day and its history, the photo itself left out of its own label's). A photo whose nearest other label
  is nearer than its own by ``--label-margin`` is flagged.
- **Drift**: per label, the day's count and the cosine distance between the day's centroid and the
  history's; a label missing, new, or moved by ``--drift-threshold`` is said in words in the report.

A day of up to ``DRIVER_ROWS`` photos with its history runs the same functions on the driver (``OnDriver``),
a larger one as Spark jobs (``OnExecutors``): the same buckets, pairs and flags either way.

History is every *earlier* day's complete features partition of the same embedding: never the day itself
(a rerun recomputes the day from its staged features alone), never a later day (a backfill gives what the
day gave when it first ran, and a pair across two days is reported once, on the later one). Each check is
off at 0. The datasets of a check that is off are not written, so publishing the day removes their old
partition: the day holds what this run computed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from pyspark.ml.feature import Normalizer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_spark import contract, quality_report, reuse, storage
from fruits_spark.layout import Layout

NEAR_DUPLICATES = "near_duplicates"
LABEL_AUDIT = "label_audit"
NEAR_DUPLICATES_SCHEMA = (
    "path string, label string, other_path string, other_label string, similarity double, other_dt string"
)
LABEL_AUDIT_SCHEMA = "path string, label string, nearest_label string, margin double"
# The LSH of the near-duplicate join: BANDS bands of BAND_BITS random hyperplanes each (sign random
# projections: two unit vectors at angle theta fall on the same side of one with probability 1 - theta/pi).
# Two photos are compared when all the bits of one band agree: they share that band's bucket. Chosen with
# bench_quality (docs/BENCHMARKS.md, round 4), where Spark ML's BucketedRandomProjectionLSH, whose hash
# tables are single projections OR-ed, made most pairs candidates of its approxSimilarityJoin.
BANDS = 16
BAND_BITS = 16
# A photo's pairs kept per bucket, the most similar first: a burst of hundreds of near-identical photos
# would otherwise pair each with all the others (ten links each still join them into one group)
MAX_PARTNERS = 10
LSH_SEED = 20261203
# rows per Arrow batch sent to the step's Python functions
ARROW_ROWS = 500
# flagged photos shown in the report, worst first, with thumbnails of their curated copies
REPORT_PHOTOS = 20


def per_mille(value: int) -> float:
    return value / 1000.0


def unit_vectors(features: DataFrame) -> DataFrame:
    """path, label, content_hash, dt, unit: each feature row as an L2-normalised ML vector."""
    vectors = features.select(
        "path", "label", "content_hash", "dt", array_to_vector("features").alias("vector")
    )
    return (
        Normalizer(p=2.0, inputCol="vector", outputCol="unit")
        .transform(vectors)
        .select("path", "label", "content_hash", "dt", "unit")
    )


def read_day(spark: SparkSession, layout: Layout) -> tuple[DataFrame, str]:
    """The day's staged features and their embedding."""
    features = spark.read.parquet(layout.dataset("features"))
    embedding = features.select("embedding").first()["embedding"]
    return features.withColumn("dt", F.lit(layout.dt)), embedding


def history_days(spark: SparkSession, layout: Layout) -> list[str]:
    """Earlier days with a complete features partition (``reuse.history_days``'s rule), oldest first."""
    indexed, unindexed = reuse.history_days(spark, layout.published)
    return sorted(day for day in (*indexed, *unindexed) if day < layout.dt)


def read_history(spark: SparkSession, layout: Layout, days: list[str], embedding: str) -> DataFrame | None:
    """path, label, content_hash, features, dt of ``days``' rows in the same feature space, or None."""
    if not days:
        return None
    root = layout.published.root("features")
    earlier = (
        spark.read.option("basePath", root)
        # days written before features carried their embedding have none and are left out
        .option("mergeSchema", "true")
        .parquet(*[f"{root}/dt={day}" for day in days])
    )
    if "embedding" not in earlier.columns:
        return None
    return earlier.filter(F.col("embedding") == F.lit(embedding)).select(
        "path", "label", "content_hash", "features", F.col("dt").cast("string").alias("dt")
    )


# --- near-duplicates ----------------------------------------------------------------------------------


def lsh_planes(dimension: int) -> np.ndarray:
    """The LSH's hyperplanes: they follow the seed and the dimension only, so the day and its history get
    the same ones, on every run and on either engine."""
    return np.random.default_rng(LSH_SEED).normal(size=(BANDS * BAND_BITS, dimension))


def band_rows(batch: pd.DataFrame, planes: np.ndarray) -> pd.DataFrame:
    """content_hash, dt, band, key, unit: each row of ``batch`` once per band, with its BAND_BITS sign bits
    in that band as one integer, and its unit vector as float32 bytes: PySpark turns an array column that
    pandas returns into Python floats one at a time (1280 a row and band), bytes it passes as they are."""
    x = np.stack(batch["unit"].to_numpy())
    bits = (x @ planes.T > 0).reshape(len(x), BANDS, BAND_BITS).astype(np.int64)
    weights = (1 << np.arange(BAND_BITS)).astype(np.int64)
    units = np.array([row.tobytes() for row in x.astype(np.float32)], dtype=object)
    return pd.DataFrame(
        {
            "content_hash": np.repeat(batch["content_hash"].to_numpy(), BANDS),
            "dt": np.repeat(batch["dt"].to_numpy(), BANDS),
            "band": np.tile(np.arange(BANDS, dtype=np.int32), len(x)),
            "key": (bits @ weights).ravel(),
            "unit": np.repeat(units, BANDS),
        }
    )


def band_keys(vectors: DataFrame, units: bool = True) -> DataFrame:
    """``band_rows`` of every row, on the executors; only their band and key unless ``units``."""
    dimension = len(vectors.select("unit").first()["unit"])
    shared = vectors.sparkSession.sparkContext.broadcast(lsh_planes(dimension))
    columns = ["content_hash", "dt", "band", "key", "unit"] if units else ["band", "key"]

    def keys(batches):
        for batch in batches:
            if not batch.empty:
                yield band_rows(batch, shared.value)[columns]

    arrays = vectors.select("content_hash", "dt", vector_to_array("unit", "float32").alias("unit"))
    schema = "content_hash string, dt string, band int, key long, unit binary"
    return arrays.mapInPandas(keys, schema if units else "band int, key long")


def _bucket_pairs(day: str, min_similarity: float):
    """The pairs of one bucket (a band's key): each photo of the day against every other member, in
    blocks of the day's rows (a bucket of a large history stays within memory), its MAX_PARTNERS most
    similar partners at most."""

    def compare(members: pd.DataFrame) -> pd.DataFrame:
        # in a fixed order and in double precision: the shuffle's order must not decide a near tie
        members = members.sort_values(["content_hash", "dt"], ignore_index=True)
        units = b"".join(members["unit"])
        vectors = np.frombuffer(units, np.float32).reshape(len(members), -1).astype(np.float64)
        hashes, days = members["content_hash"].to_numpy(), members["dt"].to_numpy()
        mine = np.flatnonzero(days == day)
        found = []
        for start in range(0, len(mine), 1024):
            rows = mine[start : start + 1024]
            similarity = vectors[rows] @ vectors.T
            # never a photo with itself; within the day each pair once (the smaller hash first)
            same = hashes[rows][:, None] == hashes[None, :]
            twice = (days[None, :] == day) & (hashes[rows][:, None] > hashes[None, :])
            similarity[same | twice | (similarity < min_similarity)] = -np.inf
            if similarity.shape[1] > MAX_PARTNERS:
                best = np.argpartition(-similarity, MAX_PARTNERS - 1, axis=1)[:, :MAX_PARTNERS]
            else:
                best = np.broadcast_to(np.arange(similarity.shape[1]), similarity.shape)
            a = np.repeat(np.arange(len(rows)), best.shape[1])
            b = best.ravel()
            keep = np.isfinite(similarity[a, b])
            a, b = a[keep], b[keep]
            found.append(
                pd.DataFrame(
                    {
                        "content_hash": hashes[rows][a],
                        "other_hash": hashes[b],
                        "other_dt": days[b],
                        "similarity": similarity[a, b].astype(np.float64),
                    }
                )
            )
        return pd.concat(found) if found else pd.DataFrame(columns=list(PAIR_COLUMNS))

    return compare


PAIR_COLUMNS = {
    "content_hash": "string",
    "other_hash": "string",
    "other_dt": "string",
    "similarity": "double",
}


def near_duplicates(day: DataFrame, history: DataFrame | None, min_similarity: float) -> DataFrame:
    """path, label, other_path, other_label, similarity, other_dt: the day's photos and the photos of the
    day (each pair once) or of its history (the earliest day a photo was seen) whose cosine reaches
    ``min_similarity``, with a different content hash."""
    dt = day.select("dt").first()["dt"]
    everyone = day if history is None else day.unionByName(history)
    keyed = band_keys(everyone)
    if history is not None:
        # only the buckets that hold a photo of the day can hold one of its pairs
        keyed = keyed.join(band_keys(day, units=False).distinct(), ["band", "key"], "left_semi")
    schema = ", ".join(f"{name} {kind}" for name, kind in PAIR_COLUMNS.items())
    pairs = (
        keyed.groupBy("band", "key")
        .applyInPandas(_bucket_pairs(dt, min_similarity), schema)
        # a pair in several bands once; a photo of the history seen on several days once, its earliest day
        .groupBy("content_hash", "other_hash")
        .agg(F.min(F.struct("other_dt", "similarity")).alias("o"))
        .select("content_hash", "other_hash", "o.other_dt", F.round("o.similarity", 6).alias("similarity"))
    )
    others = everyone.select(
        F.col("content_hash").alias("other_hash"),
        F.col("dt").alias("other_dt"),
        F.col("path").alias("other_path"),
        F.col("label").alias("other_label"),
    )
    return (
        pairs.join(day.select("content_hash", "path", "label"), "content_hash")
        .join(others, ["other_hash", "other_dt"])
        .select("path", "label", "other_path", "other_label", "similarity", "other_dt")
    )


# --- label centroids: the audit and the drift ---------------------------------------------------------


Sums = dict[str, tuple[int, np.ndarray]]


def label_sums(vectors: DataFrame, *by: str) -> dict:
    """Per label (and ``by``): the number of rows and the sum of their unit vectors (the centroid times the
    count), one pass over ``vectors``."""
    rows = vectors.groupBy("label", *by).agg(
        F.count("*").alias("n"), Summarizer.sum(F.col("unit")).alias("total")
    )
    return {
        tuple(row[key] for key in ("label", *by)) if by else row["label"]: (row["n"], row["total"].toArray())
        for row in rows.collect()
    }


def history_sums(history: DataFrame, day: DataFrame) -> tuple[Sums, Sums]:
    """(every earlier row's sums, the sums of the earlier rows whose photo is not in the day) per label. A
    photo of the day also seen earlier stands once in its label's centroid, so that the audit leaves it out
    of it as one photo; the drift compares with the history as it was."""
    in_day = day.select("content_hash").distinct().withColumn("in_day", F.lit(True))
    marked = history.join(F.broadcast(in_day), "content_hash", "left").fillna(False, ["in_day"])
    return split_history(label_sums(marked, "in_day"))


def split_history(split: dict) -> tuple[Sums, Sums]:
    """``history_sums``' two sums from the sums per (label, in_day)."""
    every = add_sums(*({label: sums} for (label, _), sums in split.items()))
    return every, {label: sums for (label, in_day), sums in split.items() if not in_day}


def audit_frame(day: DataFrame, sums: Sums, margin: float) -> DataFrame:
    """path, label, nearest_label, margin: the day's photos nearer (cosine) to another label's centroid than
    to their own by at least ``margin``; each photo left out of its own label's centroid."""
    shared = day.sparkSession.sparkContext.broadcast(centroid_table(sums))

    def flag(batches):
        for batch in batches:
            flagged = flag_batch(batch, *shared.value, margin)
            if len(flagged):
                yield flagged

    as_arrays = day.select("path", "label", vector_to_array("unit").alias("unit"))
    return as_arrays.mapInPandas(flag, LABEL_AUDIT_SCHEMA)


def centroid_table(sums: Sums) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, their counts, their sums of unit vectors), in the labels' order."""
    labels = sorted(sums)
    counts = np.array([sums[label][0] for label in labels], dtype=np.float64)
    totals = np.stack([sums[label][1] for label in labels]) if labels else np.zeros((0, 0))
    return labels, counts, totals


def flag_batch(
    batch: pd.DataFrame, names: list[str], n: np.ndarray, sum_vectors: np.ndarray, margin: float
) -> pd.DataFrame:
    """``audit_frame``'s rows of one batch (path, label, unit) against the labels' counts and sums."""
    if batch.empty:
        return pd.DataFrame(columns=["path", "label", "nearest_label", "margin"])
    index = {name: i for i, name in enumerate(names)}
    norms = np.linalg.norm(sum_vectors, axis=1)
    x = np.stack(batch["unit"].to_numpy()).astype(np.float64)
    own = batch["label"].map(index).to_numpy()
    dots = x @ sum_vectors.T  # x . (sum of a label): the centroid's cosine up to its norm
    cosine = np.divide(dots, norms, out=np.full_like(dots, -np.inf), where=norms > 0)
    rows = np.arange(len(batch))
    # its own label without the photo: |S - x|^2 = |S|^2 - 2 x.S + 1 (x is a unit vector)
    own_dot = dots[rows, own] - 1.0
    own_norm = np.sqrt(np.maximum(norms[own] ** 2 - 2.0 * dots[rows, own] + 1.0, 0.0))
    alone = n[own] <= 1  # the only photo of its label: no centroid of its own to compare with
    own_cosine = np.where(alone | (own_norm <= 1e-9), np.nan, own_dot / np.maximum(own_norm, 1e-9))
    cosine[rows, own] = -np.inf
    nearest = np.argmax(cosine, axis=1)
    gap = cosine[rows, nearest] - own_cosine
    keep = ~np.isnan(gap) & np.isfinite(cosine[rows, nearest]) & (gap >= margin)
    return pd.DataFrame(
        {
            "path": batch["path"].to_numpy()[keep],
            "label": batch["label"].to_numpy()[keep],
            "nearest_label": np.asarray(names, dtype=object)[nearest[keep]],
            "margin": np.round(gap[keep], 6),
        }
    )


def add_sums(*parts: Sums) -> Sums:
    total: Sums = {}
    for part in parts:
        for label, (n, vector) in part.items():
            seen_n, seen_vector = total.get(label, (0, 0.0))
            total[label] = (seen_n + n, seen_vector + vector)
    return total


def thumbnails(spark: SparkSession, layout: Layout, flagged: list[dict]) -> list[dict]:
    """The flagged rows with a small PNG data URI of their curated copy (the staged ``images``)."""
    if not flagged:
        return []
    paths = [row["path"] for row in flagged]
    if not storage.exists(spark, layout.dataset("images")):
        return flagged
    curated = spark.read.parquet(layout.dataset("images")).filter(F.col("path").isin(paths))
    content = {row["path"]: row["content"] for row in curated.select("path", "content").collect()}
    return [{**row, "thumbnail": quality_report.thumbnail(content.get(row["path"]))} for row in flagged]


# --- the same checks on the driver, for a small day ----------------------------------------------------
# A day whose rows and history hold up to DRIVER_ROWS photos (~50 MB of vectors) is checked on the driver
# with the functions the executors run (band_rows, _bucket_pairs, flag_batch), on one collected copy: the
# ~15 small Spark jobs and Python workers of the executors' way cost seconds for what numpy does in
# milliseconds (docs/BENCHMARKS.md, round 5).
DRIVER_ROWS = 5_000


def local_rows(vectors: DataFrame) -> pd.DataFrame:
    """path, label, content_hash, dt, unit (float64 arrays): ``vectors`` on the driver."""
    return vectors.select(
        "path", "label", "content_hash", "dt", vector_to_array("unit").alias("unit")
    ).toPandas()


def local_near_duplicates(
    day: pd.DataFrame, history: pd.DataFrame | None, min_similarity: float
) -> pd.DataFrame:
    """``near_duplicates`` on the driver: the same buckets, comparisons and choice of a pair's day."""
    dt = day["dt"].iloc[0]
    everyone = day if history is None else pd.concat([day, history], ignore_index=True)
    # the executors' way hashes float32 copies: the same bits, so the same buckets
    as_float32 = everyone.assign(unit=[np.asarray(u, np.float32) for u in everyone["unit"]])
    keyed = band_rows(as_float32, lsh_planes(len(as_float32["unit"].iloc[0])))
    wanted = keyed.loc[keyed["dt"] == dt, ["band", "key"]].drop_duplicates()
    keyed = keyed.merge(wanted, on=["band", "key"])
    compare = _bucket_pairs(dt, min_similarity)
    found = [compare(members) for _, members in keyed.groupby(["band", "key"], sort=False)]
    pairs = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(PAIR_COLUMNS))
    # as min(struct(other_dt, similarity)) on the executors: a pair in several bands once, its earliest day
    pairs = pairs.sort_values(["content_hash", "other_hash", "other_dt", "similarity"]).drop_duplicates(
        ["content_hash", "other_hash"]
    )
    pairs = pairs.assign(similarity=pairs["similarity"].astype(np.float64).round(6))
    others = everyone[["content_hash", "dt", "path", "label"]].set_axis(
        ["other_hash", "other_dt", "other_path", "other_label"], axis=1
    )
    return pairs.merge(day[["content_hash", "path", "label"]], on="content_hash").merge(
        others, on=["other_hash", "other_dt"]
    )[["path", "label", "other_path", "other_label", "similarity", "other_dt"]]


def local_label_sums(vectors: pd.DataFrame, *by: str) -> dict:
    """``label_sums`` on the driver."""
    return {
        (key if by else key[0]): (len(group), np.stack(group["unit"].to_numpy()).sum(axis=0))
        for key, group in vectors.groupby(["label", *by], sort=False)
    }


def local_history_sums(history: pd.DataFrame, day: pd.DataFrame) -> tuple[Sums, Sums]:
    """``history_sums`` on the driver."""
    marked = history.assign(in_day=history["content_hash"].isin(set(day["content_hash"])))
    return split_history(local_label_sums(marked, "in_day"))


class OnExecutors:
    """The checks of a day and its history as Spark jobs: any size."""

    def __init__(self, day: DataFrame, history: DataFrame | None) -> None:
        self.day, self.history = day.cache(), history.cache() if history is not None else None

    def near_duplicates(self, min_similarity: float) -> DataFrame:
        return near_duplicates(self.day, self.history, min_similarity)

    def sums(self) -> tuple[Sums, Sums, Sums]:
        """(the day's, every earlier row's, the earlier rows' whose photo is not in the day) per label."""
        earlier = history_sums(self.history, self.day) if self.history is not None else ({}, {})
        return label_sums(self.day), *earlier

    def audit(self, sums: Sums, margin: float) -> DataFrame:
        return audit_frame(self.day, sums, margin)

    def close(self) -> None:
        self.day.unpersist()
        if self.history is not None:
            self.history.unpersist()


class OnDriver(OnExecutors):
    """The same checks on one collected copy (a small day), their datasets handed back to Spark."""

    def __init__(self, day: DataFrame, history: DataFrame | None) -> None:
        self.spark = day.sparkSession
        self.day, self.history = local_rows(day), local_rows(history) if history is not None else None

    def near_duplicates(self, min_similarity: float) -> DataFrame:
        found = local_near_duplicates(self.day, self.history, min_similarity)
        return self.spark.createDataFrame(found, NEAR_DUPLICATES_SCHEMA)

    def sums(self) -> tuple[Sums, Sums, Sums]:
        earlier = local_history_sums(self.history, self.day) if self.history is not None else ({}, {})
        return local_label_sums(self.day), *earlier

    def audit(self, sums: Sums, margin: float) -> DataFrame:
        flagged = flag_batch(self.day[["path", "label", "unit"]], *centroid_table(sums), margin)
        return self.spark.createDataFrame(flagged, LABEL_AUDIT_SCHEMA)

    def close(self) -> None:
        pass


# --- the step -----------------------------------------------------------------------------------------


def write(frame: DataFrame, layout: Layout, name: str) -> DataFrame:
    frame.write.mode("overwrite").parquet(layout.dataset(name))
    return frame.sparkSession.read.parquet(layout.dataset(name))


def parser() -> argparse.ArgumentParser:
    return contract.step_parser("quality", "Near-duplicates, suspicious labels and drift between days.")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    spark = SparkSession.builder.appName("fruits-quality").getOrCreate()
    # band_keys writes each row once per band: Spark's 10,000-row Arrow batches became 160,000 vectors in
    # one Python worker (9.7 GB at 20,000 rows)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_ROWS))
    layout = Layout(args.output, args.dt, staged=True)
    if not storage.exists(spark, layout.dataset("features")):
        raise SystemExit(
            f"quality: no features staged for dt={args.dt} under {args.output}: run features first"
        )
    for name in (NEAR_DUPLICATES, LABEL_AUDIT):
        # a check turned off leaves nothing staged: publishing the day removes its old partition
        storage.delete(spark, layout.dataset(name))
    features, embedding = read_day(spark, layout)
    days = history_days(spark, layout)
    earlier = read_history(spark, layout, days, embedding)
    checks = None
    if args.near_duplicate_similarity or args.label_margin or args.drift_threshold:
        # counted and collected only for a check that runs: with every check off the step reads nothing more
        rows = features.count() + (earlier.count() if earlier is not None else 0)
        history = unit_vectors(earlier) if earlier is not None else None
        checks = (OnDriver if rows <= DRIVER_ROWS else OnExecutors)(unit_vectors(features), history)
    summary: dict = {"history_days": days, "embedding": embedding}
    stats: dict = {"near_duplicate_pairs": 0, "near_duplicate_groups": 0, "suspicious_labels": 0}

    if args.near_duplicate_similarity:
        similarity = per_mille(args.near_duplicate_similarity)
        pairs = write(checks.near_duplicates(similarity), layout, NEAR_DUPLICATES)
        # one pass over the written pairs, streamed a partition at a time (a day of many near-identical
        # photos has many): the groups, and the counts as the pairs go by
        tally = {"pairs": 0, "within": 0}

        def counted(rows):
            for row in rows:
                tally["pairs"] += 1
                tally["within"] += row["other_dt"] == layout.dt
                yield row

        found = (row.asDict() for row in pairs.select("path", "other_path", "other_dt").toLocalIterator())
        groups = quality_report.count_groups(counted(found), layout.dt)
        n_pairs, within = tally["pairs"], tally["within"]
        stats.update(near_duplicate_pairs=n_pairs, near_duplicate_groups=groups)
        summary["near_duplicates"] = {
            "min_similarity": similarity,
            "pairs": n_pairs,
            "within_day": within,
            "against_history": n_pairs - within,
            "groups": groups,
            "dataset": layout.published.dataset(NEAR_DUPLICATES),
        }

    day_sums, earlier_sums, others_sums = {}, {}, {}
    if args.label_margin or args.drift_threshold:
        day_sums, earlier_sums, others_sums = checks.sums()
    if args.label_margin:
        margin = per_mille(args.label_margin)
        flagged = write(checks.audit(add_sums(day_sums, others_sums), margin), layout, LABEL_AUDIT)
        worst = [
            row.asDict() for row in flagged.orderBy(F.desc("margin"), "path").limit(REPORT_PHOTOS).collect()
        ]
        n_flagged = flagged.count()
        stats["suspicious_labels"] = n_flagged
        summary["label_audit"] = {
            "margin": margin,
            "flagged": n_flagged,
            "photos": thumbnails(spark, layout, worst),
            "dataset": layout.published.dataset(LABEL_AUDIT),
        }
    if args.drift_threshold:
        summary["drift"] = quality_report.drift(
            day_sums, earlier_sums, per_mille(args.drift_threshold), bool(days)
        )
    if checks is not None:
        checks.close()
        summary["checked_on"] = "driver" if isinstance(checks, OnDriver) else "executors"
    stats.update(quality=summary, step="quality", seconds=round(time.monotonic() - started, 2))
    storage.write_stats(spark, layout, "quality", stats)
    print(
        f"quality: {stats['near_duplicate_pairs']} near-duplicate pairs in {stats['near_duplicate_groups']} "
        f"groups, {stats['suspicious_labels']} suspicious labels, history {len(days)} day(s)"
    )
