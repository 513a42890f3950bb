"""One identity for weights: the embedding id is a digest of the weight values, whatever file holds them."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fruits_spark import model
from tests.random_backbone import save_random_backbone


@pytest.fixture(params=["random_weights", "shared_weights"])
def weights(request) -> Path:
    """Our own Keras file, and one saved elsewhere (../shared): a file's layout must not change its id."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def loaded(weights):
    backbone = model.build_backbone(224)
    backbone.load_weights(str(weights))
    return backbone


def test_a_file_re_saved_by_keras_names_the_same_weights(weights, loaded, tmp_path):
    resaved = tmp_path / "resaved.weights.h5"
    loaded.save_weights(str(resaved))
    assert model.read_weights(str(resaved), 224).digest == model.read_weights(str(weights), 224).digest


def test_a_legacy_h5_file_names_the_same_weights(weights, loaded, tmp_path):
    legacy = tmp_path / "mobilenet_v2.h5"
    # Keras 3 writes the legacy HDF5 layout (model_weights/<layer>/<layer>/kernel:0) only for whole models
    loaded.save(str(legacy))
    read = model.read_weights(str(legacy), 224)
    assert read.suffix == ".h5"
    assert read.digest == model.read_weights(str(weights), 224).digest
    # and it is a weights file Keras loads, not only one that hashes alike
    again = model.build_backbone(224)
    model.load_into(again, read)
    for expected, actual in zip(loaded.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_the_model_arrays_name_the_same_weights_as_the_file(random_weights):
    # the ``imagenet`` path digests model.get_weights(): the same values in a file must give the same id
    loaded = model.build_backbone(224)
    loaded.load_weights(str(random_weights))
    assert model.values_digest(loaded.get_weights()) == model.read_weights(str(random_weights), 224).digest


def test_one_changed_value_names_other_weights(random_weights, tmp_path):
    weights = random_weights
    changed = tmp_path / "changed.weights.h5"
    shutil.copy(weights, changed)
    with h5py.File(changed, "r+") as weights_file:
        names: list[str] = []
        weights_file.visititems(
            lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None
        )
        dataset = weights_file[names[len(names) // 2]]
        values = dataset[()]
        values.flat[0] = np.nextafter(values.flat[0], np.float32(np.inf))
        dataset[...] = values
    assert model.read_weights(str(changed), 224).digest != model.read_weights(str(weights), 224).digest


def test_two_random_backbones_have_different_ids(random_weights, tmp_path):
    other = save_random_backbone(tmp_path, seed=1)
    assert model.read_weights(str(random_weights), 224).digest != model.read_weights(str(other), 224).digest
