"""The ONNX Runtime engine computes the Keras embedding, fails plainly before inference, needs no TensorFlow.

Pretrained weights (../shared) check the embedding that matters; randomly initialised weights (the
``random_weights`` fixture) run everywhere else: both engines must agree on them too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fruits_spark import contract, features, images, model
from fruits_spark.engines import onnx as onnx_engine
from fruits_spark.features import FeatureParams, featurize_batch, transform
from tests.random_backbone import save_random_backbone
from tests.similarity import assert_same_features


@pytest.fixture(scope="module")
def real_images(shared_images) -> list[Path]:
    return [
        path
        for label in ("apple", "lemon", "mango", "raspberry")
        for path in sorted((shared_images / label).glob("*.jpg"))[:2]
    ]


@pytest.fixture(scope="module")
def sample_images(sample_dir) -> list[Path]:
    return [path for label in sorted(sample_dir.iterdir()) for path in sorted(label.glob("*.jpg"))[:2]]


def pixels(paths: list[Path], size: int) -> np.ndarray:
    # the curated copy, as the features step reads it
    return np.stack(
        [
            images.preprocess(images.decode_rgb(images.inspect_image(p.read_bytes()).content, size))
            for p in paths
        ]
    )


def keras_features(weights: Path, size: int, batch: np.ndarray) -> np.ndarray:
    backbone = model.build_backbone(size)
    backbone.load_weights(str(weights))
    return backbone.predict(batch, verbose=0)


def onnx_for(weights: Path, size: int) -> onnx_engine.OnnxModel:
    return onnx_engine.cached_onnx(model.read_weights(str(weights), size), size)


# --- the embedding ---------------------------------------------------------------------------------------


def test_onnx_features_equal_keras_on_real_images_with_pretrained_weights(shared_weights, real_images):
    # the embedding that matters, at the product's input size; every size is compared on random weights below
    size = 224
    exported = onnx_for(shared_weights, size)
    assert exported.embedding == model.embedding_id(
        model.read_weights(str(shared_weights), size).digest, size
    )
    batch = pixels(real_images, size)
    actual = onnx_engine.onnx_infer(exported.data, threads=1)(batch)
    assert_same_features(actual, keras_features(shared_weights, size, batch))


# each size is a Keras model build and an ONNX export (5-20 s): the smallest (the last layers' maps at 3x3),
# a middle one and the default, the largest, which stays in `make test-fast`; the sizes between share
# their code and their shapes' kinds
SIZES = sorted({min(contract.INPUT_SIZES), contract.INPUT_SIZES[len(contract.INPUT_SIZES) // 2]})


@pytest.mark.parametrize(
    "size",
    [
        *(pytest.param(size, marks=pytest.mark.slow) for size in SIZES),
        max(contract.INPUT_SIZES),
    ],
)
def test_onnx_features_equal_keras_at_the_smallest_a_middle_and_the_largest_input_size(
    size, random_weights, sample_images
):
    batch = pixels(sample_images, size)
    # runs of 3 images: the split of a batch into session runs is part of what is compared
    actual = onnx_engine.onnx_infer(onnx_for(random_weights, size).data, threads=2, session_batch=3)(batch)
    assert_same_features(actual, keras_features(random_weights, size, batch))


def curated_rows(paths: list[Path]) -> list[tuple]:
    png = images.inspect_image(paths[0].read_bytes()).content
    rows = [
        (
            str(p),
            p.parent.name,
            images.content_hash(p.read_bytes()),
            bytearray(images.inspect_image(p.read_bytes()).content),
        )
        for p in paths
    ]
    return [
        *rows,
        ("broken.png", "apple", "0" * 64, bytearray(b"not a png at all")),
        ("empty.png", "apple", "1" * 64, bytearray()),
        ("truncated.png", "apple", "2" * 64, bytearray(png[: len(png) // 2])),
    ]


def run_engine(spark, curated, weights: Path, engine: str) -> tuple[dict, FeatureParams]:
    if engine == "onnx":
        value = onnx_for(weights, 224)
        digest = value.weights_digest
    else:
        value = model.read_weights(str(weights), 224)
        digest = value.digest
    params = FeatureParams(
        spark.sparkContext.broadcast(value),
        digest,
        batch_size=3,
        model_builds=spark.sparkContext.accumulator(0),
        rows_inferred=spark.sparkContext.accumulator(0),
        engine=engine,
    )
    return {row["path"]: row for row in transform(curated, params).collect()}, params


@pytest.mark.parametrize("weights_fixture", ["random_weights", "shared_weights"])
def test_both_engines_give_the_same_features_through_spark(spark, request, weights_fixture, sample_images):
    weights = request.getfixturevalue(weights_fixture)
    rows = curated_rows(sample_images)
    curated = spark.createDataFrame(
        rows, "path string, label string, content_hash string, content binary"
    ).repartition(5)
    by_engine = {engine: run_engine(spark, curated, weights, engine) for engine in contract.ENGINE_NAMES}

    good = [str(p) for p in sample_images]
    onnx_rows, onnx_params = by_engine["onnx"]
    tensorflow_rows, _ = by_engine["tensorflow"]
    assert all(onnx_rows[path]["error"] is None for path in good)
    assert_same_features(
        np.array([onnx_rows[path]["features"] for path in good]),
        np.array([tensorflow_rows[path]["features"] for path in good]),
    )
    # a bad image fails alone, with the same reason whatever the engine (the detail may hold an address)
    for path in ("broken.png", "empty.png", "truncated.png"):
        assert onnx_rows[path]["features"] is None
        assert onnx_rows[path]["error"].split(":")[0] == tensorflow_rows[path]["error"].split(":")[0]
        assert onnx_rows[path]["error"].split(":")[0] != "inference"
    # two cores: at most two Python workers, each creating one session for its many tasks
    assert 1 <= onnx_params.model_builds.value <= 2
    assert onnx_params.rows_inferred.value == len(rows)


def test_an_image_the_engine_refuses_fails_alone(random_weights, sample_images):
    session = onnx_engine.onnx_infer(onnx_for(random_weights, 96).data, threads=1)
    poisoned = images.inspect_image(sample_images[1].read_bytes()).content

    def infer(batch: np.ndarray) -> np.ndarray:
        # stands for an input the runtime rejects (a kernel error): the poisoned image's exact pixels
        poison = images.preprocess(images.decode_rgb(poisoned, 96))
        if any(np.array_equal(image, poison) for image in batch):
            raise RuntimeError("ONNXRuntimeError: invalid input")
        return session(batch)

    contents = [images.inspect_image(p.read_bytes()).content for p in sample_images[:4]]
    result = featurize_batch(contents, infer, 96, batch_size=4)
    assert result["error"][1].startswith("inference: RuntimeError")
    assert result["features"][1] is None
    expected = session(pixels([sample_images[i] for i in (0, 2, 3)], 96))
    assert_same_features(np.stack([result["features"][i] for i in (0, 2, 3)]), expected)


# --- failing before inference ----------------------------------------------------------------------------


def run_step(tmp_path: Path, *args: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        features.main(["--output", str(tmp_path / "out"), "--dt", "2026-11-23", *args])
    message = str(stopped.value.code)
    assert not (tmp_path / "out" / "features").exists(), "the step must stop before inferring anything"
    return message


def test_weights_of_another_network_with_the_same_size_stop_the_step_in_one_line(spark, tmp_path):
    import keras

    # as many parameters as MobileNetV2's backbone, so that only the export can tell
    other = keras.Sequential([keras.Input((model.BACKBONE_PARAMETERS - 1,)), keras.layers.Dense(1)])
    assert other.count_params() == model.BACKBONE_PARAMETERS
    path = tmp_path / "dense.weights.h5"
    other.save_weights(str(path))
    message = run_step(tmp_path, "--weights", str(path))
    assert message.startswith("features: cannot export the model to ONNX: the weights do not fit MobileNetV2")
    assert "\n" not in message


def test_a_missing_tf2onnx_stops_the_step_in_one_line(spark, tmp_path, monkeypatch, random_weights):
    monkeypatch.setenv(contract.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    message = run_step(tmp_path, "--weights", str(random_weights))
    assert message.startswith("features: cannot export the model to ONNX here (ModuleNotFoundError")
    assert "--engine-artifact" in message
    assert "\n" not in message


def test_a_pre_exported_model_must_match_the_weights_and_input_size(tmp_path, random_weights):
    import onnx

    exported = onnx_for(random_weights, 224)
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.data)
    with pytest.raises(onnx_engine.OnnxModelUnavailable, match="exported for input size 224, not 96"):
        onnx_engine.read_onnx(exported.data, str(path), exported.weights_digest, 96)
    other_digest = model.read_weights(str(save_random_backbone(tmp_path, seed=1)), 224).digest
    with pytest.raises(onnx_engine.OnnxModelUnavailable, match=f"carries weights {exported.weights_digest}"):
        onnx_engine.read_onnx(exported.data, str(path), other_digest, 224)
    anonymous = onnx.load_from_string(exported.data)
    del anonymous.metadata_props[:]
    with pytest.raises(onnx_engine.OnnxModelUnavailable, match="does not say which weights it carries"):
        onnx_engine.read_onnx(anonymous.SerializeToString(), "anonymous.onnx", None, 224)


def test_the_export_is_cached_per_embedding(tmp_path, monkeypatch, random_weights):
    weights = model.read_weights(str(random_weights), 96)
    first = onnx_engine.cached_onnx(weights, 96, folder=tmp_path)
    assert (tmp_path / f"{first.embedding}.onnx").read_bytes() == first.data

    def no_export(*_args):
        raise AssertionError("exported again although cached")

    monkeypatch.setattr(onnx_engine, "export_onnx", no_export)
    assert onnx_engine.cached_onnx(weights, 96, folder=tmp_path) == first


# --- no TensorFlow on the onnx path ----------------------------------------------------------------------

NO_TENSORFLOW_CHECK = """
import json, sys
import numpy as np
from fruits_spark import features, model
from fruits_spark.engines import onnx as onnx_engine
weights, exported = sys.argv[1], sys.argv[2]
digest = model.read_weights(weights, 224).digest
checked = onnx_engine.read_onnx(open(exported, "rb").read(), exported, digest, 224)
embedded = onnx_engine.onnx_infer(checked.data, threads=1)(np.zeros((2, 224, 224, 3), np.float32))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "onnx"))
print(json.dumps({"shape": list(embedded.shape), "heavy": heavy}))
"""


def test_a_pre_exported_model_is_checked_and_run_without_importing_tensorflow(tmp_path, random_weights):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(onnx_for(random_weights, 224).data)
    completed = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW_CHECK, str(random_weights), str(exported)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, contract.FEATURE_DIM]
    assert result["heavy"] == []


def test_the_step_takes_a_pre_exported_model_by_path_or_uri(spark, tmp_path, random_weights):
    exported = onnx_for(random_weights, 224)
    path = tmp_path / "staged" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(exported.data)
    for given in (str(path), f"file://{path}"):
        assert onnx_engine.prepare_model(spark, str(random_weights), 224, given) == exported
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        onnx_engine.prepare_model(spark, str(random_weights), 224, str(tmp_path / "absent.onnx"))
    with pytest.raises(onnx_engine.OnnxModelUnavailable, match="exported for input size 224, not 160"):
        onnx_engine.prepare_model(spark, str(random_weights), 160, str(path))
