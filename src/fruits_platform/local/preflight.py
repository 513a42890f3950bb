"""Checks a local run's params before anything is written: a mistake fails at once, naming the fix.

What a user mistypes (an input that does not exist or holds nothing, weights that are not there, an output
that is a file or not writable) must never reach the steps, which would overwrite a day's partitions first
and fail after. ``fruits run-local`` and ``fruits_features_local`` call ``check_run`` before staging even the
code. Remote URIs (s3://, hdfs://) are checked by the steps themselves through Hadoop's FileSystem.
"""

from __future__ import annotations

import os
from pathlib import Path

from fruits_platform.pipeline import PipelineParams
from fruits_spark.contract import WEIGHTS_ENV


class BadRun(ValueError):
    """A param that cannot work; its message names the param and what to pass instead."""


def _local(uri: str) -> Path | None:
    """The local path of a path or file:// URI; None for a remote URI (the steps check those)."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def check_input(uri: str) -> None:
    path = _local(uri)
    if path is None:
        return
    fix = "pass --input a folder of images, one sub-folder per label"
    if not path.exists():
        raise BadRun(f"--input {uri} does not exist: {fix}")
    if not path.is_dir():
        raise BadRun(f"--input {uri} is a file, not a folder: {fix}")
    if any(names for _, _, names in os.walk(path)):
        return
    raise BadRun(f"--input {uri} holds no files: {fix}; nothing was run, earlier outputs are unchanged")


def check_file(flag: str, uri: str, fix: str) -> None:
    path = _local(uri)
    if path is None:
        return
    if not path.exists():
        raise BadRun(f"{flag} {uri} not found: {fix}")
    if not path.is_file():
        raise BadRun(f"{flag} {uri} is not a file: {fix}")


def check_output(uri: str, input_uri: str) -> None:
    path = _local(uri)
    if path is None:
        return
    fix = "pass --output a folder you can write to (created if missing)"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise BadRun(f"--output {uri} is a file, not a folder{where}: {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadRun(f"--output {uri} is not writable (no write permission on {existing}): {fix}")
    source = _local(input_uri)
    if source is not None and path.resolve().is_relative_to(source.resolve()):
        raise BadRun(f"--output {uri} is inside --input {input_uri}: the next run would ingest the outputs")


def check_run(params: PipelineParams) -> None:
    """Raises BadRun for the first param that cannot work; writes nothing."""
    check_input(params.input)
    if params.weights != "imagenet":
        check_file(
            "--weights",
            params.weights,
            f"pass --weights imagenet or the path of a MobileNetV2 .weights.h5 file (or set {WEIGHTS_ENV})",
        )
    if params.onnx_model:
        check_file(
            "--onnx-model", params.onnx_model, "pass a .onnx file exported for these weights, or omit it"
        )
    check_output(params.output, params.input)
