"""MobileNetV2 backbone: weights loaded once on the driver, model rebuilt once per Python worker."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np

FEATURE_DIM = 1280
WEIGHTS_ENV = "FRUITS_WEIGHTS"


class WeightsUnavailable(RuntimeError):
    """Raised with a one-line, actionable message when the weights cannot be obtained."""


def build_backbone(input_size: int):
    from keras.applications import MobileNetV2

    return MobileNetV2(
        input_shape=(input_size, input_size, 3), include_top=False, pooling="avg", weights=None
    )


def load_weights(weights: str, input_size: int, local_path: str | None = None) -> list[np.ndarray]:
    """The backbone's weights as numpy arrays: ``imagenet`` (Keras download) or a local .weights.h5."""
    if weights == "imagenet":
        from keras.applications import MobileNetV2

        try:
            model = MobileNetV2(
                input_shape=(input_size, input_size, 3), include_top=False, pooling="avg", weights="imagenet"
            )
        except Exception as error:
            raise WeightsUnavailable(
                f"cannot download the ImageNet weights ({type(error).__name__}); "
                f"pass --weights PATH_OR_URI to a .weights.h5 file or set {WEIGHTS_ENV}"
            ) from error
        return model.get_weights()
    model = build_backbone(input_size)
    try:
        model.load_weights(local_path or weights)
    except Exception as error:
        raise WeightsUnavailable(f"cannot load weights from {weights}: {error}") from error
    return model.get_weights()


def weights_digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


# Lives as long as the Python worker; Spark reuses workers across tasks (spark.python.worker.reuse).
_WORKER_MODELS: dict[tuple[str, int], Callable[[np.ndarray], np.ndarray]] = {}


def worker_model(key: tuple[str, int], get_weights: Callable[[], list[np.ndarray]], threads: int):
    """The compiled inference function for ``key``, built at most once in this process.

    Returns (function, built_now).
    """
    if key in _WORKER_MODELS:
        return _WORKER_MODELS[key], False
    import tensorflow as tf

    try:
        # one worker owns `threads` cores: more TF threads would only fight the other workers
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # the runtime was already initialised by an earlier model in this process
    _, input_size = key
    model = build_backbone(input_size)
    model.set_weights(get_weights())

    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)])
    def infer(batch):
        return model(batch, training=False)

    _WORKER_MODELS.clear()
    _WORKER_MODELS[key] = lambda batch: infer(tf.constant(batch)).numpy()
    return _WORKER_MODELS[key], True


def default_threads() -> int:
    return int(os.environ.get("FRUITS_TF_THREADS", "1"))
