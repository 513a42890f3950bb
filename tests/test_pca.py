"""PCA with Spark ML against numpy's SVD, the CSV matrix, and the versioned model."""

from __future__ import annotations

import numpy as np
import pytest

from fruits_spark.layout import Layout
from fruits_spark.pca import PcaParams, as_csv_matrix, fit, fit_or_load, transform

N_ROWS, DIM = 240, 1280


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

    projected = {r["path"]: r["pca"] for r in transform(features_df, pca_model).collect()}
    assert len(projected) == N_ROWS
    expected_first = features_matrix[0].astype(np.float64) @ spark_components
    np.testing.assert_allclose(projected["img0.jpg"], expected_first, rtol=1e-4, atol=1e-3)


def test_csv_matrix_has_one_column_per_component(features_df):
    pca_model = fit(features_df, PcaParams(3))
    matrix = as_csv_matrix(transform(features_df, pca_model), 3)
    assert matrix.columns == ["path", "label", "pc_1", "pc_2", "pc_3"]
    assert matrix.count() == N_ROWS


def test_model_is_versioned_applied_then_refitted(spark, features_df, tmp_path):
    layout = Layout(str(tmp_path), "2026-11-23")
    features_df.write.parquet(layout.dataset("features"))
    first, version, why = fit_or_load(spark, layout, PcaParams(4), refit=False)
    assert why == "first_fit"
    again, same_version, why_again = fit_or_load(spark, layout, PcaParams(4), refit=False)
    assert (same_version, why_again) == (version, "applied")
    np.testing.assert_allclose(again.pc.toArray(), first.pc.toArray())
    _, k_version, why_k = fit_or_load(spark, layout, PcaParams(5), refit=False)
    assert why_k == "k_changed_from_4"
    assert k_version != version
    _, refit_version, why_refit = fit_or_load(spark, layout, PcaParams(5), refit=True)
    assert why_refit == "refit"
    assert refit_version not in (version, k_version)
