"""The benchmark's own pieces: the replicated corpus and the embedding-quality measures."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fruits_platform.tools import quality
from fruits_platform.tools.bench import prepare_images
from fruits_spark.images import content_hash


def test_replicated_images_have_their_own_hash_and_the_same_pixels(sample_dir, tmp_path):
    originals = sorted(p for p in sample_dir.rglob("*.jpg"))
    prepared = prepare_images(sample_dir, len(originals) + 5, tmp_path / "corpus")

    assert len(prepared) == len(originals) + 5
    assert len({content_hash(p.read_bytes()) for p in prepared}) == len(prepared)
    for copy in prepared[len(originals) :]:
        original = sample_dir / copy.parent.name / copy.name.split("_", 1)[1]
        assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(original)))


def _clusters(rng, labels=("apple", "lemon", "mango"), per_label=20, spread=0.1):
    centres = {label: rng.normal(size=8) * 10 for label in labels}
    names = [f"{label}/{i:02d}.jpg" for label in labels for i in range(per_label)]
    vectors = np.stack([centres[n.split("/")[0]] + rng.normal(size=8) * spread for n in names])
    return names, np.asarray([n.split("/")[0] for n in names]), vectors


def test_separated_classes_score_perfectly_and_shuffled_labels_do_not():
    rng = np.random.default_rng(7)
    paths, labels, vectors = _clusters(rng)

    assert quality.nearest_centroid_accuracy(paths, labels, vectors) == 1.0
    assert quality.one_shot_accuracy(labels, vectors, draws=20) == 1.0
    shuffled = rng.permutation(labels)
    assert quality.nearest_centroid_accuracy(paths, shuffled, vectors) < 0.7
    assert quality.one_shot_accuracy(shuffled, vectors, draws=20) < 0.7


def test_one_shot_accuracy_drops_as_classes_overlap():
    tight = quality.one_shot_accuracy(*_clusters(np.random.default_rng(1), spread=1.0)[1:], draws=50)
    loose = quality.one_shot_accuracy(*_clusters(np.random.default_rng(1), spread=8.0)[1:], draws=50)
    assert loose < tight


def test_mean_cosine_compares_the_same_images_only():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert quality.mean_cosine(["x", "y"], a, ["x", "y"], a * 3) == pytest.approx(1.0)
    assert quality.mean_cosine(["x", "y"], a, ["x", "y"], a[::-1]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="different images"):
        quality.mean_cosine(["x", "y"], a, ["x", "z"], a)


def test_vectors_are_read_back_in_path_order(tmp_path):
    folder = tmp_path / "pca" / "dt=2026-01-01"
    folder.mkdir(parents=True)
    table = pa.table({"path": ["b", "a"], "label": ["lemon", "apple"], "pca": [[3.0, 4.0], [1.0, 2.0]]})
    pq.write_table(table, folder / "part-0.parquet")

    paths, labels, vectors = quality.read_vectors(str(tmp_path / "pca"), "pca")

    assert paths == ["a", "b"]
    assert labels.tolist() == ["apple", "lemon"]
    assert vectors.tolist() == [[1.0, 2.0], [3.0, 4.0]]
