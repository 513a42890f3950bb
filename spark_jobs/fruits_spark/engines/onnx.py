"""The ``onnx`` engine: the Keras MobileNetV2 exported once per embedding, run in ONNX Runtime, without
TensorFlow.

The export needs TensorFlow, Keras and tf2onnx, and runs where they are: the features step's driver
(``cached_onnx``, once per embedding and machine) or the EMR staging task (``export_onnx``, uploaded next to
the weights). The exported file carries the weights and the embedding it computes (metadata), so a step that
is handed one (``--engine-artifact``) needs neither TensorFlow nor the export. The Python workers only need
onnxruntime: one InferenceSession per worker process (``build``), a few hundred MB instead of
TensorFlow's 1.5 GB.

Nothing here imports Spark at module level: the staging task imports this module on the Airflow worker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fruits_spark import model
from fruits_spark.contract import FEATURE_DIM, machine_cache

# Images per InferenceSession.run in a worker. ONNX Runtime holds a whole run's activations at once: at
# 224x224 one process peaked at 938 MB for 64 images; in the features step at 20,000 images a Python worker
# peaked at 611 MB with 16 and 521 MB with 8, at the same speed (docs/BENCHMARKS.md, round 2).
SESSION_BATCH = 8
# written into the exported file: the step can check a pre-exported model against --weights/--input-size
META_DIGEST = "fruits.weights_digest"
META_INPUT_SIZE = "fruits.input_size"


class OnnxModelUnavailable(model.WeightsUnavailable):
    """No usable ONNX model: the export is impossible here, or a given file is not this backbone's."""


@dataclass(frozen=True)
class OnnxModel:
    """An exported model's bytes (they carry the weights) and the embedding it computes."""

    data: bytes
    weights_digest: str
    input_size: int

    @property
    def embedding(self) -> str:
        return model.embedding_id(self.weights_digest, self.input_size)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def export_onnx(weights: model.WeightsFile, input_size: int, destination: str | Path) -> Path:
    """Exports the Keras backbone with ``weights`` to ``destination`` (.onnx), atomically.

    Raises OnnxModelUnavailable, with one line saying why, when it cannot be done here.
    """
    try:
        import onnx
        import tf2onnx  # noqa: F401  (Keras imports it lazily; a missing one must be said plainly)
    except ImportError as error:
        raise OnnxModelUnavailable(
            f"cannot export the model to ONNX here ({_first_line(error)}): install tf2onnx, "
            "or pass --engine-artifact PATH_OR_URI exported elsewhere, or --engine tensorflow"
        ) from None
    try:
        backbone = model.build_backbone(input_size)
    except ImportError as error:
        raise OnnxModelUnavailable(
            "cannot export the model to ONNX here: TensorFlow/Keras are not installed "
            f"({_first_line(error)}); pass --engine-artifact PATH_OR_URI exported where they are"
        ) from None
    try:
        model.load_into(backbone, weights)
    except Exception as error:
        raise OnnxModelUnavailable(
            f"cannot export the model to ONNX: the weights do not fit MobileNetV2 ({_first_line(error)})"
        ) from None
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Keras exports only a model that has run once
    backbone(np.zeros((1, input_size, input_size, 3), dtype=np.float32), training=False)
    with tempfile.TemporaryDirectory(dir=destination.parent) as folder:
        exported = Path(folder) / "model.onnx"
        try:
            backbone.export(str(exported), format="onnx", verbose=False)
        except Exception as error:
            raise OnnxModelUnavailable(f"cannot export the model to ONNX: {_first_line(error)}") from None
        proto = onnx.load(str(exported))
        for key, value in ((META_DIGEST, weights.digest), (META_INPUT_SIZE, str(input_size))):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(exported))
        # a concurrent run exporting the same embedding writes the same content: the last rename wins
        os.replace(exported, destination)
    return destination


def cache_dir() -> Path:
    return machine_cache("onnx")


def cached_onnx(weights: model.WeightsFile, input_size: int, folder: Path | None = None) -> OnnxModel:
    """The ONNX model for these weights and input size, exported on the first call only on this machine."""
    path = (folder or cache_dir()) / f"{model.embedding_id(weights.digest, input_size)}.onnx"
    if path.exists():
        try:
            return read_onnx(path.read_bytes(), str(path), weights.digest, input_size)
        except OnnxModelUnavailable:
            pass  # a damaged or foreign cache entry is exported again, not trusted
    export_onnx(weights, input_size, path)
    return read_onnx(path.read_bytes(), str(path), weights.digest, input_size)


def _session(data: bytes, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        # a Spark worker owns spark.task.cpus cores: more threads would only fight the other workers
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def read_onnx(
    data: bytes, source: str, weights_digest: str | None = None, input_size: int | None = None
) -> OnnxModel:
    """Checks an exported file on the driver, before any inference: loadable, this backbone's shapes, and
    (when given) the weights and input size it was exported from."""
    try:
        session = _session(data, threads=1)
    except Exception as error:
        raise OnnxModelUnavailable(f"cannot load the ONNX model {source}: {_first_line(error)}") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if META_DIGEST not in metadata or META_INPUT_SIZE not in metadata:
        raise OnnxModelUnavailable(
            f"the ONNX model {source} does not say which weights it carries: "
            "export it with fruits_spark.engines.onnx.export_onnx"
        )
    found = OnnxModel(data, metadata[META_DIGEST], int(metadata[META_INPUT_SIZE]))
    inputs, outputs = session.get_inputs(), session.get_outputs()
    size = found.input_size
    shapes_fit = inputs[0].shape[1:] == [size, size, 3] and outputs[0].shape[1:] == [FEATURE_DIM]
    if len(inputs) != 1 or not shapes_fit:
        raise OnnxModelUnavailable(
            f"the ONNX model {source} is not MobileNetV2's backbone at {size}x{size}: "
            f"input {inputs[0].shape}, output {outputs[0].shape}"
        )
    if input_size is not None and found.input_size != input_size:
        raise OnnxModelUnavailable(
            f"the ONNX model {source} was exported for input size {found.input_size}, not {input_size}"
        )
    if weights_digest is not None and found.weights_digest != weights_digest:
        raise OnnxModelUnavailable(
            f"the ONNX model {source} carries weights {found.weights_digest}, not the given weights "
            f"{weights_digest}"
        )
    return found


def onnx_infer(data: bytes, threads: int, session_batch: int = SESSION_BATCH) -> model.Infer:
    """One InferenceSession for this process, from the broadcast bytes; called in the forked worker."""
    session = _session(data, threads)
    name = session.get_inputs()[0].name

    def infer(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [
            session.run(None, {name: batch[start : start + session_batch]})[0]
            for start in range(0, len(batch), session_batch)
        ]
        return np.concatenate(parts) if parts else np.empty((0, FEATURE_DIM), np.float32)

    return infer


def prepare_model(spark, weights: str, input_size: int, onnx_model: str = "") -> OnnxModel:
    """The checked ONNX model: the given pre-exported file (no TensorFlow here), else the local cache's,
    exported on its first use."""
    from fruits_spark import storage

    if not onnx_model:
        local = None if weights == "imagenet" else storage.fetch_to_local(spark, weights)
        return cached_onnx(model.read_weights(weights, input_size, local), input_size)
    try:
        data = Path(storage.fetch_to_local(spark, onnx_model)).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"ONNX model not found: {onnx_model}") from None
    # the ImageNet weights' digest needs Keras and a download: the file's own record is trusted instead
    digest = None
    if weights != "imagenet":
        digest = model.read_weights(weights, input_size, storage.fetch_to_local(spark, weights)).digest
    return read_onnx(data, onnx_model, digest, input_size)


def build_artifact(weights: model.WeightsFile, input_size: int, destination: Path) -> Path:
    """The engine's artifact (``Engine.artifact``): the exported model, for the EMR staging to upload, so
    that the nodes never import TensorFlow. Taken from this machine's export cache."""
    destination.write_bytes(cached_onnx(weights, input_size).data)
    return destination


def prepare(spark, args: argparse.Namespace):
    """The driver's part: the checked model, broadcast, and the digest of the weights it carries."""
    exported = prepare_model(spark, args.weights, args.input_size, args.engine_artifact)
    return spark.sparkContext.broadcast(exported), exported.weights_digest


def build(value: OnnxModel, input_size: int, threads: int) -> model.Infer:
    return onnx_infer(value.data, threads)
