"""``fruits bench`` (a): feature extraction by a bare engine, one process per engine, no Spark.

The same images, weights and preprocessing as the pipeline, in batches of 64 (``tf.function``; an ONNX Runtime
InferenceSession with its default threads), so that the features step can be compared with what its engine
does alone. Each engine runs in a child process (``--bare-worker``): its memory and threads are its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fruits_spark.contract import engine_record


def _decoded_batches(paths: list[str], input_size: int, batch_size: int):
    """The same decode and preprocessing for every bare engine: PIL, bilinear resize, [-1, 1]."""
    import numpy as np
    from PIL import Image

    from fruits_spark import images

    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            image = (
                Image.open(path).convert("RGB").resize((input_size, input_size), Image.Resampling.BILINEAR)
            )
            batch.append(images.preprocess(np.asarray(image, dtype=np.float32)))
        yield np.stack(batch)


def _timed(paths: list[str], started: float, ready: float) -> dict:
    finished = time.monotonic()
    return {
        "images": len(paths),
        "seconds_total": round(finished - started, 2),
        "seconds_inference": round(finished - ready, 2),
    }


def bare_tensorflow(paths: list[str], weights: str, input_size: int, batch_size: int = 64) -> dict:
    """(a): runs inside its own process so that its memory and threads are its own."""
    started = time.monotonic()
    import tensorflow as tf

    from fruits_spark.model import build_backbone

    model = build_backbone(input_size)
    model.load_weights(weights)
    infer = tf.function(
        lambda batch: model(batch, training=False),
        input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)],
    )
    ready = time.monotonic()
    for batch in _decoded_batches(paths, input_size, batch_size):
        infer(tf.constant(batch)).numpy()
    return _timed(paths, started, ready)


def bare_onnx(paths: list[str], onnx_file: str, input_size: int, batch_size: int = 64) -> dict:
    """(a) with ONNX Runtime: the exported model in one InferenceSession with its default threads (every
    core), in its own process; no TensorFlow is imported."""
    started = time.monotonic()
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ready = time.monotonic()
    for batch in _decoded_batches(paths, input_size, batch_size):
        session.run(None, {name: batch})
    return _timed(paths, started, ready)


# the (a) baselines, outside Spark, of the engines that have one (contract.ENGINES lists the engines)
BARE_ENGINES = {"tensorflow": bare_tensorflow, "onnx": bare_onnx}


def exported_model(weights: str, input_size: int) -> str:
    """The .onnx file of these weights, from the features step's cache (exported here on a miss)."""
    from fruits_spark import model
    from fruits_spark.engines import onnx as onnx_engine

    exported = onnx_engine.cached_onnx(model.read_weights(weights, input_size), input_size)
    return str(onnx_engine.cache_dir() / f"{exported.embedding}.onnx")


def run_bare(
    paths: list[Path], weights: str, input_size: int, work: Path, engine: str = "tensorflow"
) -> dict:
    listing = work / "bare_paths.json"
    listing.write_text(json.dumps([str(p) for p in paths]))
    model_file = exported_model(weights, input_size) if engine_record(engine).artifact else weights
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fruits_platform.tools.bench_bare",
            "--bare-worker",
            str(listing),
            model_file,
            str(input_size),
            engine,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["seconds_process"] = round(time.monotonic() - started, 2)
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["--bare-worker"]:
    listing, model_file, size, bare_engine = sys.argv[2:6]
    print(json.dumps(BARE_ENGINES[bare_engine](json.loads(Path(listing).read_text()), model_file, int(size))))
