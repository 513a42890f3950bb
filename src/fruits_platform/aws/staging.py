"""S3 staging: what the EMR steps read (code, bootstrap, model weights), uploaded once, encrypted.

Code and bootstrap files go to ``s3://<bucket>/artifacts/<content hash>/`` (the hash of the built folder,
so a changed job gets a new prefix and a rerun uploads nothing); the weights to
``s3://<bucket>/artifacts/weights/<key>/mobilenet_v2.weights.h5``. Every object is written with
ServerSideEncryption and a sha256 in its metadata; an object already there with the same size and sha256
is skipped (``head_object``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from botocore.exceptions import ClientError

from fruits_platform.artifacts import build_artifacts, content_hash
from fruits_platform.aws import bootstrap
from fruits_platform.aws.bootstrap import sha256_file
from fruits_spark.contract import PARAMS, engine_record
from fruits_spark.images import is_input_image

ARTIFACTS_PREFIX = "artifacts/"
WEIGHTS_NAME = "mobilenet_v2.weights.h5"
SSE_ALGORITHM = "AES256"
SHA256_METADATA = "sha256"

# the cluster cannot run without these (bootstrap/ in the repository, staged with the code)
BOOTSTRAP_SCRIPT = "install-python-deps.sh"


# the cluster's Python runtime per inference engine (its record's): ONNX Runtime's has no TensorFlow (a
# faster bootstrap)
def bootstrap_requirements(engine: str) -> str:
    return engine_record(engine).requirements


SPARK_ENV_FILE = "spark-env.json"


class StagingError(RuntimeError):
    """Staging cannot proceed; ``str()`` is a one-line reason."""


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def head(s3, bucket: str, key: str) -> dict | None:
    """``head_object`` or None when the object does not exist."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def same_object(s3, bucket: str, key: str, size: int, sha256: str) -> bool:
    found = head(s3, bucket, key)
    return bool(
        found
        and found.get("ContentLength") == size
        and found.get("Metadata", {}).get(SHA256_METADATA) == sha256
    )


def put_file(s3, bucket: str, key: str, path: Path, sha256: str | None = None) -> None:
    # upload_file, not put_object: one put_object streams the body through botocore's checksummed
    # aws-chunked encoding in pure Python, where s3transfer sends 8 MB parts on threads (20 times faster
    # for TensorFlow's wheel: docs/BENCHMARKS.md)
    s3.upload_file(
        str(path),
        bucket,
        key,
        ExtraArgs={
            "ServerSideEncryption": SSE_ALGORITHM,
            "Metadata": {SHA256_METADATA: sha256 or sha256_file(path)},
        },
    )


def upload_if_changed(s3, bucket: str, key: str, path: Path) -> bool:
    """Uploads ``path`` unless the object is already there with the same size and sha256; True if uploaded."""
    sha256 = sha256_file(path)
    if same_object(s3, bucket, key, path.stat().st_size, sha256):
        return False
    put_file(s3, bucket, key, path, sha256)
    return True


def count_images(s3, bucket: str, prefix: str) -> tuple[int, int, int]:
    """(objects, images, the images' bytes) under ``prefix``: what the run will read, what it will
    featurise, and how much decoding that is (a 12 MP photo of 2.5 MB costs ~12 thumbnails). The listing
    gives the sizes: no object is read."""
    objects = images = image_bytes = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            objects += 1
            if is_input_image(item["Key"].removeprefix(prefix)):
                images += 1
                image_bytes += int(item.get("Size", 0))
    return objects, images, image_bytes


def imagenet_weights_file(input_size: int, destination: Path) -> Path:
    """Downloads the ImageNet backbone once, here, and saves it: the executors never download anything."""
    from fruits_spark.model import read_weights

    path = destination / WEIGHTS_NAME
    path.write_bytes(read_weights("imagenet", input_size).data)
    return path


def stage_weights(s3, bucket: str, weights: str, input_size: int, scratch: Path) -> tuple[str, bool]:
    """(the weights URI the features step reads, whether something was uploaded)."""
    if weights.startswith("s3://"):
        weights_bucket, key = split_s3_uri(weights)
        try:
            found = head(s3, weights_bucket, key)
        except ClientError as error:
            raise StagingError(f"cannot read weights {weights}: {error}") from None
        if not found:
            raise StagingError(f"weights {weights} not found")
        return weights, False
    if weights == "imagenet":
        # ImageNet weights differ per input size; they never change, so one staged copy per size is enough
        key = f"{ARTIFACTS_PREFIX}weights/imagenet-{input_size}/{WEIGHTS_NAME}"
        if head(s3, bucket, key):
            return s3_uri(bucket, key), False
        try:
            path = imagenet_weights_file(input_size, scratch)
        except Exception as error:
            raise StagingError(
                f"cannot download the ImageNet weights ({type(error).__name__}: {error}); "
                "pass weights = an s3:// URI or a .weights.h5 path on the worker"
            ) from None
        put_file(s3, bucket, key, path)
        return s3_uri(bucket, key), True
    path = Path(weights).expanduser()
    if not path.is_file():
        raise StagingError(f"weights file {weights} not found on the Airflow worker")
    key = f"{ARTIFACTS_PREFIX}weights/{sha256_file(path)[:16]}/{WEIGHTS_NAME}"
    return s3_uri(bucket, key), upload_if_changed(s3, bucket, key, path)


@dataclass
class StagedArtifacts:
    artifacts_uri: str
    weights_uri: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    spark_env: list[dict] = field(default_factory=list)
    # the engine's pre-built artifact (onnx: the exported model), staged next to the weights; empty for an
    # engine without one
    engine_artifact_uri: str = ""
    # the wheels the bootstrap installs with --no-index (bootstrap.build_wheelhouse), a folder URI
    wheelhouse_uri: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def bootstrap_script_uri(self) -> str:
        return self.artifacts_uri + BOOTSTRAP_SCRIPT

    def requirements_uri(self, engine: str) -> str:
        return self.artifacts_uri + bootstrap_requirements(engine)


def local_weights(s3, weights_uri: str, folder: Path) -> Path:
    """The staged weights file, downloaded (the export reads it here, on the Airflow worker)."""
    bucket, key = split_s3_uri(weights_uri)
    path = folder / Path(key).name
    s3.download_file(bucket, key, str(path))
    return path


def stage_engine_artifact(
    s3, bucket: str, engine: str, weights_uri: str, input_size: int, scratch: Path
) -> tuple[str, bool]:
    """(the URI of the engine's artifact, whether it was uploaded now), for an engine whose record names one
    (``Engine.artifact``; ONNX: the exported model, so that the nodes never import TensorFlow): built here by
    its module's ``build_artifact``, once per engine and embedding (the weight values and the input size)."""
    from fruits_spark import model

    record = engine_record(engine)
    weights_file = local_weights(s3, weights_uri, scratch)
    try:
        weights = model.read_weights(str(weights_file), input_size)
        embedding = model.embedding_id(weights.digest, input_size)
        key = f"{ARTIFACTS_PREFIX}{record.name}/{embedding}/{record.artifact}"
        if head(s3, bucket, key):
            return s3_uri(bucket, key), False
        path = record.load().build_artifact(weights, input_size, scratch / record.artifact)
    except model.WeightsUnavailable as error:
        raise StagingError(f"cannot build the {engine} engine's artifact for the cluster: {error}") from None
    put_file(s3, bucket, key, path)
    return s3_uri(bucket, key), True


def stage_wheelhouse(s3, bucket: str, requirements: Path, arch: str, staged: StagedArtifacts) -> str:
    """The wheelhouse of ``requirements`` for ``arch`` (built once per content), staged under its hash."""
    try:
        folder = bootstrap.build_wheelhouse(requirements, arch)
    except bootstrap.WheelhouseError as error:
        raise StagingError(str(error)) from None
    prefix = f"{bootstrap.WHEELHOUSE_PREFIX}{bootstrap.wheelhouse_hash(folder)}/"
    for name, sha256 in bootstrap.manifest(folder).items():
        key, wheel = prefix + name, folder / name
        if same_object(s3, bucket, key, wheel.stat().st_size, sha256):
            staged.skipped.append(key)
        else:
            put_file(s3, bucket, key, wheel, sha256)
            staged.uploaded.append(key)
    return s3_uri(bucket, prefix)


def stage_artifacts(
    s3,
    bucket: str,
    weights: str,
    input_size: int,
    scratch: Path,
    engine: str = PARAMS["engine"].default,
    arch: str = "x86_64",
) -> StagedArtifacts:
    """Builds the artifacts into ``scratch`` and stages them, with the wheelhouse of the engine's
    requirements for the nodes' ``arch``, the weights (and the engine's artifact, where its record names
    one), in ``bucket``."""
    built = build_artifacts(scratch / "artifacts")
    required = (BOOTSTRAP_SCRIPT, bootstrap_requirements(engine), SPARK_ENV_FILE)
    missing = [name for name in required if not (built / name).is_file()]
    if missing:
        raise StagingError(
            f"bootstrap file(s) {', '.join(missing)} missing: the cluster could not install "
            "its Python dependencies"
        )
    prefix = f"{ARTIFACTS_PREFIX}{content_hash(built)}/"
    staged = StagedArtifacts(s3_uri(bucket, prefix), "")
    for path in sorted(p for p in built.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(built).as_posix()
        (staged.uploaded if upload_if_changed(s3, bucket, key, path) else staged.skipped).append(key)
    # the executors' Python (the bootstrap's venv), as EMR Configurations
    staged.spark_env = json.loads((built / SPARK_ENV_FILE).read_text())
    staged.wheelhouse_uri = stage_wheelhouse(s3, bucket, built / bootstrap_requirements(engine), arch, staged)
    weights_dir = scratch / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    staged.weights_uri, uploaded = stage_weights(s3, bucket, weights, input_size, weights_dir)
    (staged.uploaded if uploaded else staged.skipped).append(staged.weights_uri)
    if engine_record(engine).artifact:
        staged.engine_artifact_uri, uploaded = stage_engine_artifact(
            s3, bucket, engine, staged.weights_uri, input_size, weights_dir
        )
        (staged.uploaded if uploaded else staged.skipped).append(staged.engine_artifact_uri)
    return staged
