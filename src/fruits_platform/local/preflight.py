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
from fruits_spark.contract import RUN_PARAMS, WEIGHTS_ENV, local_path


class BadRun(ValueError):
    """A param that cannot work; its message names the param and what to pass instead."""


def _local(uri: str) -> Path | None:
    """The local path of a path or file: URI; None for a remote URI (the steps check those)."""
    path = local_path(uri)
    return None if path is None else Path(path)


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


# what to pass instead, for the file params of the contract that people give most
FILE_FIXES = {
    "weights": "pass --weights imagenet or the path of a MobileNetV2 .weights.h5 file "
    f"(or set {WEIGHTS_ENV})",
}


def check_weights(params: PipelineParams) -> None:
    """``imagenet`` must be in Keras' cache or downloadable: said before any step, not after ingest."""
    from fruits_spark import model

    if params.weights == "imagenet":
        try:
            model.imagenet_reachable(params.input_size)
        except model.WeightsUnavailable as error:
            raise BadRun(f"--weights imagenet: {error}") from None


def check_run(params: PipelineParams) -> None:
    """Raises BadRun for the first param that cannot work; writes nothing. Every path param of the contract
    (a registered step's too) is checked: the input a folder of files, the output writable, the others
    files that exist."""
    check_input(params.input)
    for param in RUN_PARAMS:
        value = params[param.name]
        if param.path and param.name not in ("input", "output") and value and value != "imagenet":
            check_file(param.flag, value, FILE_FIXES.get(param.name, f"{param.flag}: {param.help}"))
    check_output(params.output, params.input)
    # last: the only check that may ask the network
    check_weights(params)
