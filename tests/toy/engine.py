"""The toy engine, with an artifact built before the run (as ONNX's export): a random projection of the
mean colour, seeded by the weights' digest, saved as .npy."""

import io
from pathlib import Path

import numpy as np

from fruits_spark import model
from fruits_spark.contract import FEATURE_DIM


def _projection(digest: str) -> np.ndarray:
    return np.random.default_rng(int(digest[:8], 16)).normal(size=(3, FEATURE_DIM)).astype(np.float32)


def build_artifact(weights: model.WeightsFile, input_size: int, destination: Path) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, _projection(weights.digest))
    destination.write_bytes(buffer.getvalue())
    return destination


def prepare(spark, args):
    from fruits_spark import storage

    local = None if args.weights == "imagenet" else storage.fetch_to_local(spark, args.weights)
    weights = model.read_weights(args.weights, args.input_size, local)
    if args.engine_artifact:
        # the staged artifact: what the run uses, and a proof that it reached the step
        projection = np.load(storage.fetch_to_local(spark, args.engine_artifact))
        print(f"toy engine: artifact {args.engine_artifact}")
    else:
        projection = _projection(weights.digest)
    return spark.sparkContext.broadcast(projection), weights.digest


def build(projection, input_size, threads):
    return lambda batch: batch.mean(axis=(1, 2)) @ projection
