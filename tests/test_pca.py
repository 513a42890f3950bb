"""PCA with Spark ML against numpy's SVD, the CSV matrix, and the versioned model."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from fruits_spark.layout import Layout
from fruits_spark.pca import PcaParams, as_csv_matrix, fit, fit_or_load, transform

# Spark ML's PCA is the same code for any width: 64 columns instead of the embedding's 1280 make each fit's
# covariance 400x smaller, and the comparisons with numpy prove as much
N_ROWS, DIM = 240, 64


@pytest.fixture(scope="module")
def features_matrix() -> np.ndarray:
    rng = np.random.default_rng(7)
    latent = rng.normal(size=(N_ROWS, 8)) * np.array([10, 8, 6, 5, 4, 3, 2, 1])
    return (latent @ rng.normal(size=(8, DIM)) + 0.1 * rng.normal(size=(N_ROWS, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def features_df(spark, features_matrix):
    rows = [(f"img{i}.jpg", ["apple", "mango"][i % 2], row.tolist()) for i, row in enumerate(features_matrix)]
    return spark.createDataFrame(rows, "path string, label string, features array<float>")


def test_pca_equals_numpy_svd(features_df, features_matrix):
    k = 6
    pca_model = fit(features_df, PcaParams(k))
    centred = features_matrix.astype(np.float64) - features_matrix.mean(axis=0, dtype=np.float64)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    ratio = singular**2 / np.sum(singular**2)
    np.testing.assert_allclose(pca_model.explainedVariance.toArray(), ratio[:k], atol=1e-4)
    spark_components = pca_model.pc.toArray()
    for j in range(k):
        assert abs(spark_components[:, j] @ components[j]) > 0.999  # equal up to sign

    rows = transform(features_df, pca_model, "v=1-k6-w1-s224").collect()
    projected = {r["path"]: r["pca"] for r in rows}
    assert len(projected) == N_ROWS
    # every row names the model that made it: a consumer sees when a refit changed the space
    assert {r["pca_model_version"] for r in rows} == {"v=1-k6-w1-s224"}
    expected_first = features_matrix[0].astype(np.float64) @ spark_components
    np.testing.assert_allclose(projected["img0.jpg"], expected_first, rtol=1e-4, atol=1e-3)


def test_csv_matrix_has_one_column_per_component(features_df):
    pca_model = fit(features_df, PcaParams(3))
    matrix = as_csv_matrix(transform(features_df, pca_model, "v=1"), 3)
    assert matrix.columns == ["path", "label", "pc_1", "pc_2", "pc_3"]
    assert matrix.count() == N_ROWS


def test_model_is_versioned_applied_then_refitted(spark, features_df, tmp_path):
    layout = Layout(str(tmp_path), "2026-11-23")
    features_df.withColumn("embedding", F.lit("w1-s224")).write.parquet(layout.dataset("features"))
    first, version, why = fit_or_load(spark, layout, PcaParams(4), False, "w1-s224")
    assert why == "first_fit"
    again, same_version, why_again = fit_or_load(spark, layout, PcaParams(4), False, "w1-s224")
    assert (same_version, why_again) == (version, "applied")
    np.testing.assert_allclose(again.pc.toArray(), first.pc.toArray())
    _, k_version, why_k = fit_or_load(spark, layout, PcaParams(5), False, "w1-s224")
    assert why_k == "k_changed_from_4"
    assert k_version != version
    _, refit_version, why_refit = fit_or_load(spark, layout, PcaParams(5), True, "w1-s224")
    assert why_refit == "refit"
    assert refit_version not in (version, k_version)


def test_another_embedding_gets_its_own_model_fitted_on_its_own_features(spark, features_df, tmp_path):
    """Features of another input size or weights live in another space: never mix them in one PCA."""
    old_day, new_day = Layout(str(tmp_path), "2026-11-22"), Layout(str(tmp_path), "2026-11-23")
    # a day written before features carried their embedding
    features_df.write.parquet(old_day.dataset("features"))
    features_df.withColumn("embedding", F.lit("w1-s224")).write.parquet(new_day.dataset("features"))
    _, v224, _ = fit_or_load(spark, new_day, PcaParams(3), False, "w1-s224")
    rng = np.random.default_rng(11)
    other = (rng.normal(size=(60, 2)) * [5, 1]) @ rng.normal(size=(2, DIM))
    other_df = spark.createDataFrame(
        [(f"other{i}.jpg", "lemon", row.tolist()) for i, row in enumerate(other.astype(np.float32))],
        "path string, label string, features array<float>",
    )
    other_df.withColumn("embedding", F.lit("w1-s96")).write.mode("overwrite").parquet(
        new_day.dataset("features")
    )

    model96, v96, why = fit_or_load(spark, new_day, PcaParams(3), False, "w1-s96")

    assert why == "first_fit"
    assert v96 != v224
    assert v96.endswith("-k3-w1-s96")
    # fitted on the w1-s96 rows alone: neither the old day nor the w1-s224 rows took part
    alone = fit(other_df, PcaParams(3))
    np.testing.assert_allclose(
        model96.explainedVariance.toArray(), alone.explainedVariance.toArray(), atol=1e-6
    )
    _, again224, why224 = fit_or_load(spark, new_day, PcaParams(3), False, "w1-s224")
    assert (again224, why224) == (v224, "applied")
