"""The ``tensorflow`` engine, the Keras reference: the driver checks and broadcasts the weights file's bytes,
and each Python worker rebuilds the Keras model from them: cheaper than building it on the driver too
(docs/BENCHMARKS.md, round 1).
"""

from __future__ import annotations

import argparse

from fruits_spark import model


def prepare(spark, args: argparse.Namespace):
    """The driver's part: the checked weights file, broadcast, and its digest."""
    from fruits_spark import storage

    if args.engine_artifact:
        # it builds its model from the weights: an artifact given here is someone's mistake
        raise model.WeightsUnavailable(
            "--engine-artifact is for an engine with an artifact (onnx), not tensorflow"
        )
    local = None if args.weights == "imagenet" else storage.fetch_to_local(spark, args.weights)
    weights_file = model.read_weights(args.weights, args.input_size, local)
    return spark.sparkContext.broadcast(weights_file), weights_file.digest


def build(weights: model.WeightsFile, input_size: int, threads: int) -> model.Infer:
    """The Keras model in a ``tf.function``, on ``threads`` TensorFlow threads."""
    import tensorflow as tf

    try:
        # one worker owns `threads` cores: more TF threads would only fight the other workers
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # the runtime was already initialised by an earlier model in this process
    backbone = model.build_backbone(input_size)
    model.load_into(backbone, weights)

    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)])
    def infer(batch):
        return backbone(batch, training=False)

    return lambda batch: infer(tf.constant(batch)).numpy()
