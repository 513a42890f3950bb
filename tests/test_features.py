"""Feature extraction on Spark equals a plain single-process Keras computation with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fruits_spark import contract, images, model
from fruits_spark.features import FeatureParams, transform


@pytest.fixture(scope="module")
def real_images(shared_images):
    return [
        path
        for label in ("apple", "lemon", "mango", "raspberry")
        for path in sorted((shared_images / label).glob("*.jpg"))[:2]
    ]


@pytest.fixture(scope="module")
def keras_reference(real_images, shared_weights):
    """Features computed the textbook way: PIL, Keras preprocess_input, model.predict."""
    from keras.applications.mobilenet_v2 import MobileNetV2, preprocess_input

    backbone = MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=None)
    backbone.load_weights(str(shared_weights))
    batch = np.stack(
        [
            np.asarray(
                Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32
            )
            for p in real_images
        ]
    )
    return backbone.predict(preprocess_input(batch), verbose=0), backbone


def test_spark_features_equal_keras_and_the_model_is_built_once_per_worker(
    spark, real_images, keras_reference, shared_weights
):
    expected, _ = keras_reference
    weights = model.read_weights(str(shared_weights), 224)
    rows = [
        (
            str(p),
            p.parent.name,
            images.content_hash(p.read_bytes()),
            bytearray(images.inspect_image(p.read_bytes()).content),
        )
        for p in real_images
    ]
    rows.append(("broken.png", "apple", "0" * 64, bytearray(b"not a png at all")))
    partitions = 6
    curated = spark.createDataFrame(rows, "path string, label string, content_hash string, content binary")
    params = FeatureParams(
        spark.sparkContext.broadcast(weights),
        weights.digest,
        batch_size=3,
        model_builds=spark.sparkContext.accumulator(0),
        rows_inferred=spark.sparkContext.accumulator(0),
        # the reference engine; the onnx one is compared with it in test_onnx_engine.py
        engine="tensorflow",
    )
    result = {r["path"]: r for r in transform(curated.repartition(partitions), params).collect()}

    for i, path in enumerate(real_images):
        row = result[str(path)]
        assert row["error"] is None
        actual = np.asarray(row["features"], dtype=np.float64)
        assert actual.shape == (contract.FEATURE_DIM,)
        cosine = actual @ expected[i] / (np.linalg.norm(actual) * np.linalg.norm(expected[i]))
        assert cosine >= 0.999, (path, cosine)
    assert result["broken.png"]["features"] is None
    assert "UnidentifiedImageError" in result["broken.png"]["error"]
    # two cores -> at most two Python workers, each building the model once for its many tasks
    assert 1 <= params.model_builds.value <= 2 < partitions
    assert params.rows_inferred.value == len(rows)


def test_missing_weights_file_gives_a_clear_error(tmp_path):
    with pytest.raises(model.WeightsUnavailable, match="cannot load weights from"):
        model.read_weights(str(tmp_path / "absent.weights.h5"), 224)


def test_the_parameter_check_matches_the_keras_backbone(random_weights):
    backbone = model.build_backbone(224)
    assert backbone.count_params() == model.BACKBONE_PARAMETERS
    # a file of this backbone's weights passes read_weights' parameter check
    assert model.read_weights(str(random_weights), 224).data == random_weights.read_bytes()


def test_weights_of_another_network_are_refused_on_the_driver(tmp_path):
    import h5py

    other = tmp_path / "resnet.weights.h5"
    with h5py.File(other, "w") as weights_file:
        weights_file["layers/dense/vars/0"] = np.zeros((1280, 10), dtype=np.float32)
    with pytest.raises(model.WeightsUnavailable, match="12,800 parameters, MobileNetV2's backbone has"):
        model.read_weights(str(other), 224)


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("s3://bucket/artifacts/abc/mobilenet_v2.weights.h5", ".weights.h5"),
        ("/home/me/.keras/models/mobilenet_v2_no_top.h5", ".h5"),
        ("weights.hdf5", ".hdf5"),
    ],
)
def test_a_weights_file_keeps_the_suffix_keras_reads_its_format_from(tmp_path, random_weights, name, suffix):
    copy = tmp_path / "copy"
    copy.write_bytes(random_weights.read_bytes())
    assert model.read_weights(name, 224, local_path=str(copy)).suffix == suffix
