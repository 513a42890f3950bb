"""How well an embedding separates the labels: the quality side of the input-size trade-off.

On four visually distinct fruits every input size classifies the held-out images perfectly with class
centroids, so two harder measures sit next to it: centroids from a single image per class, and how close
each image's features stay to the ones the default 224 input gives.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq


def read_vectors(folder: str, column: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, vectors) of a features or pca output folder, sorted by path."""
    table = pq.read_table(folder, columns=["path", "label", column]).sort_by("path")
    vectors = np.asarray(table.column(column).to_pylist(), dtype=np.float64)
    return table.column("path").to_pylist(), np.asarray(table.column("label").to_pylist()), vectors


def _nearest(centroids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    distances = np.linalg.norm(vectors[:, None, :] - centroids[None, :, :], axis=2)
    return np.argmin(distances, axis=1)


def nearest_centroid_accuracy(paths: list[str], labels: np.ndarray, vectors: np.ndarray) -> float:
    """Share of held-out images (a fixed 30% by path hash) whose nearest class centroid is their label."""
    held_out = np.array([int(hashlib.sha256(p.encode()).hexdigest(), 16) % 10 < 3 for p in paths])
    classes = np.unique(labels[~held_out])
    centroids = np.stack([vectors[~held_out & (labels == c)].mean(axis=0) for c in classes])
    predicted = classes[_nearest(centroids, vectors[held_out])]
    return float(np.mean(predicted == labels[held_out]))


def one_shot_accuracy(labels: np.ndarray, vectors: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """Mean accuracy when each class is represented by one random image, over ``draws`` seeded draws."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    scores = []
    for _ in range(draws):
        chosen = np.array([rng.choice(m) for m in members])
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        predicted = classes[_nearest(vectors[chosen], vectors[rest])]
        scores.append(np.mean(predicted == labels[rest]))
    return float(np.mean(scores))


def mean_cosine(paths_a: list[str], a: np.ndarray, paths_b: list[str], b: np.ndarray) -> float:
    """Mean cosine similarity of the vectors two runs gave the same paths."""
    if paths_a != paths_b:
        raise ValueError("the two runs embedded different images")
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(cosine))
