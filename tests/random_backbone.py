"""A randomly initialised MobileNetV2 backbone, saved as Keras saves weights: the real load path runs
without ../shared. A module of its own, with no side effect on import: ``make rehearse-aws`` uses it
outside pytest, where tests/conftest.py's set-up (an Airflow home, a cache folder) would be left behind."""

from __future__ import annotations

from pathlib import Path


def save_random_backbone(folder: Path, seed: int) -> Path:
    import keras
    import numpy as np

    from fruits_spark.model import build_backbone

    backbone = build_backbone(224)
    # Keras' own initialisation leaves batch norm as the identity and makes the features vanish (~1e-11)
    # after 17 blocks: scaled kernels and non-trivial batch-norm statistics keep them of order 1 and make
    # an exporter's batch-norm folding matter
    rng = np.random.default_rng(seed)
    depthwise = {
        id(layer.kernel) for layer in backbone.layers if isinstance(layer, keras.layers.DepthwiseConv2D)
    }
    for variable in backbone.weights:
        shape = tuple(variable.shape)
        if id(variable) in depthwise:
            values = rng.normal(0.0, np.sqrt(2 / (shape[0] * shape[1])), shape)
        elif variable.name == "kernel":
            values = rng.normal(0.0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        elif variable.name in ("gamma", "moving_variance"):
            values = rng.uniform(0.5, 1.5, shape)
        else:
            values = rng.normal(0.0, 0.1, shape)
        variable.assign(values.astype(np.float32))
    path = folder / f"mobilenet_v2_random_{seed}.weights.h5"
    backbone.save_weights(str(path))
    return path
