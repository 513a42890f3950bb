"""MobileNetV2 backbone: the weights file read once on the driver, an inference engine built once per worker.

The driver checks a weights file's shape and digests its values with h5py, without TensorFlow. The engines
(``fruits_spark.engines``) broadcast what their workers build from: the ``tensorflow`` engine the file's
bytes, the default ``onnx`` engine the exported model, so that its workers never import TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fruits_spark.contract import WEIGHTS_ENV

# MobileNetV2(include_top=False, alpha=1.0): every kernel, bias and batch-norm statistic, whatever the
# input size. A file with another count is not this backbone's weights.
BACKBONE_PARAMETERS = 2_257_984


class WeightsUnavailable(RuntimeError):
    """Raised with a one-line, actionable message when the weights cannot be obtained."""


@dataclass(frozen=True)
class WeightsFile:
    """A weights file's bytes, the suffix Keras picks its format from (.weights.h5 or legacy .h5), and a
    digest of the weights that names the feature space."""

    data: bytes
    suffix: str
    digest: str


def embedding_id(weights_digest: str, input_size: int) -> str:
    """Names the feature space: features of other weights or another input size are not comparable."""
    return f"{weights_digest}-s{input_size}"


def build_backbone(input_size: int, weights: str | None = None):
    """MobileNetV2 without its classifier, average-pooled: the one definition of the backbone."""
    from keras.applications import MobileNetV2

    return MobileNetV2(
        input_shape=(input_size, input_size, 3), include_top=False, pooling="avg", weights=weights
    )


def _h5_arrays(path: str) -> list[np.ndarray]:
    """Every array stored in an HDF5 weights file, whatever its layout (.weights.h5 or legacy .h5)."""
    import h5py

    arrays: list[np.ndarray] = []

    def add(_name: str, node) -> None:
        if isinstance(node, h5py.Dataset):
            arrays.append(node[()])

    with h5py.File(path, "r") as weights_file:
        weights_file.visititems(add)
    return arrays


def values_digest(arrays: list[np.ndarray]) -> str:
    """Names weights by their values alone: the same for ``imagenet`` and any file carrying those values.

    Each array is digested with its dtype and shape; the sorted per-array digests are digested again, so
    neither the order nor the names that a file format or Keras version gives the arrays change the id.
    """
    digests = []
    for array in arrays:
        array = np.ascontiguousarray(array)
        one = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        one.update(array.tobytes())
        digests.append(one.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def _suffix(name: str) -> str:
    return ".weights.h5" if name.endswith(".weights.h5") else (Path(name).suffix or ".h5")


def read_weights(weights: str, input_size: int, local_path: str | None = None) -> WeightsFile:
    """The backbone's weights: ``imagenet`` (Keras download) or a .weights.h5 file, checked, as bytes."""
    if weights == "imagenet":
        return _imagenet_weights(input_size)
    path = local_path or weights
    try:
        arrays = _h5_arrays(path)
    except Exception as error:
        raise WeightsUnavailable(f"cannot load weights from {weights}: {error}") from error
    parameters = sum(np.asarray(array).size for array in arrays)
    if parameters != BACKBONE_PARAMETERS:
        raise WeightsUnavailable(
            f"cannot load weights from {weights}: {parameters:,} parameters, "
            f"MobileNetV2's backbone has {BACKBONE_PARAMETERS:,}"
        )
    return WeightsFile(Path(path).read_bytes(), _suffix(weights), values_digest(arrays))


def _first_line(error: BaseException) -> str:
    """The class and the message: a proxy refusal, an SSL failure and no network read differently."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


# where Keras downloads MobileNetV2's ImageNet backbone from, and the name it caches it under
IMAGENET_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def imagenet_file(input_size: int) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{input_size}_no_top.h5"


def imagenet_reachable(input_size: int, timeout: float = 10.0) -> None:
    """WeightsUnavailable, naming the way out, unless Keras has the ImageNet weights in its cache or can
    download them (one HEAD request, through the proxy of the environment): a run learns it before its
    first step, not after ingest."""
    import urllib.request

    cache = (
        Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models" / imagenet_file(input_size)
    )
    if cache.exists():
        return
    request = urllib.request.Request(IMAGENET_BASE + imagenet_file(input_size), method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except Exception as error:
        raise WeightsUnavailable(
            f"cannot download the ImageNet weights ({_first_line(error)}); "
            f"pass --weights PATH_OR_URI to a .weights.h5 file or set {WEIGHTS_ENV}"
        ) from None


def _imagenet_weights(input_size: int) -> WeightsFile:
    try:
        model = build_backbone(input_size, weights="imagenet")
    except ImportError:
        raise WeightsUnavailable(
            "the ImageNet weights need Keras, not installed here: "
            "pass --weights PATH_OR_URI to a .weights.h5 file (and --engine-artifact)"
        ) from None
    except Exception as error:
        raise WeightsUnavailable(
            f"cannot download the ImageNet weights ({_first_line(error)}); "
            f"pass --weights PATH_OR_URI to a .weights.h5 file or set {WEIGHTS_ENV}"
        ) from error
    # digest of the values, not of the saved file: the same weights must name the same space every day,
    # and a file staged from them (staging.py) must name the same space as ``imagenet`` itself
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "imagenet.weights.h5"
        model.save_weights(saved)
        return WeightsFile(saved.read_bytes(), ".weights.h5", values_digest(model.get_weights()))


def load_into(backbone, weights: WeightsFile) -> None:
    # Keras reads weights only from a named file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"backbone{weights.suffix}"
        path.write_bytes(weights.data)
        backbone.load_weights(str(path))


Infer = Callable[[np.ndarray], np.ndarray]

# Lives as long as the Python worker; Spark reuses workers across tasks (spark.python.worker.reuse).
_WORKER_MODELS: dict[tuple, Infer] = {}


def worker_model(key: tuple, build: Callable[[], Infer]) -> tuple[Infer, bool]:
    """The inference function for ``key`` (engine, embedding), built at most once in this process.

    Only one is kept: a worker that moves to another embedding frees the previous model's memory.
    Returns (function, built_now).
    """
    if key in _WORKER_MODELS:
        return _WORKER_MODELS[key], False
    _WORKER_MODELS.clear()
    _WORKER_MODELS[key] = build()
    return _WORKER_MODELS[key], True
