"""How two computations of the same embedding are compared: every image's cosine, and what sets it apart."""

from __future__ import annotations

import numpy as np


def assert_same_features(actual: np.ndarray, expected: np.ndarray, min_cosine: float = 0.9999) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    assert np.isfinite(actual).all()

    def cosines(a, b):
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    assert cosines(actual, expected).min() >= min_cosine, cosines(actual, expected)
    # Random weights give every image nearly the same direction (cosine ~0.99 between images): what makes
    # one image's features its own must agree as well, so the common part is removed and compared again
    mean = expected.mean(axis=0)
    assert cosines(actual - mean, expected - mean).min() >= 0.999, cosines(actual - mean, expected - mean)
