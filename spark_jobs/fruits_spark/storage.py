"""Small-file I/O through Hadoop's FileSystem, so one code path serves local paths, file:// and s3://."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass

from pyspark.sql import SparkSession

from fruits_spark.contract import local_path
from fruits_spark.layout import Layout


@dataclass(frozen=True)
class ListedFile:
    uri: str
    length: int


def _fs_and_path(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def qualify(spark: SparkSession, uri: str) -> str:
    """The fully qualified form Spark itself reports (``file:/x/y``, ``s3://b/k``)."""
    fs, path = _fs_and_path(spark, uri)
    return str(fs.makeQualified(path).toString())


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _fs_and_path(spark, uri)
    return bool(fs.exists(path))


# Hadoop's FileStatus.toString(): "<Class>{path=<uri>; isDirectory=false; length=<n>; replication=..."
_STATUS = re.compile(r"\A\w+\{path=(?P<uri>.*); isDirectory=false; length=(?P<length>\d+); ", re.DOTALL)
_SEPARATOR = "\u0000"


def _listed_in_bulk(statuses) -> list[ListedFile] | None:
    """The statuses as one string from one JVM call, parsed; None when any of them does not parse."""
    parts = str(statuses.mkString(_SEPARATOR)).split(_SEPARATOR)
    matches = [_STATUS.match(part) for part in parts]
    if len(parts) != statuses.size() or not all(matches):
        return None
    return [ListedFile(m["uri"], int(m["length"])) for m in matches]


def list_files(spark: SparkSession, uri: str) -> list[ListedFile]:
    """Every file below ``uri``, hidden ones included (Spark's readers skip those silently).

    One py4j round trip per file is ~4 ms, so 100,000 uploads would list in minutes: the statuses cross
    in one string, and only a listing that does not parse (a class with its own toString) falls back to
    asking file by file."""
    fs, path = _fs_and_path(spark, uri)
    if not fs.exists(path):
        return []
    statuses = spark.sparkContext._jvm.org.apache.spark.deploy.SparkHadoopUtil.get().listLeafStatuses(
        fs, path
    )
    listed = _listed_in_bulk(statuses)
    if listed is not None:
        return listed
    found = []
    iterator = fs.listFiles(path, True)
    while iterator.hasNext():
        status = iterator.next()
        found.append(ListedFile(str(status.getPath().toString()), int(status.getLen())))
    return found


def list_dirs(spark: SparkSession, uri: str) -> list[str]:
    fs, path = _fs_and_path(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(str(s.getPath().getName()) for s in fs.listStatus(path) if s.isDirectory())


def delete(spark: SparkSession, uri: str) -> None:
    """Removes ``uri`` and everything below it; nothing to do when it is absent."""
    fs, path = _fs_and_path(spark, uri)
    fs.delete(path, True)


def move(spark: SparkSession, source: str, target: str) -> None:
    """Renames ``source`` to ``target`` (which must not exist), creating ``target``'s parent folders."""
    fs, path = _fs_and_path(spark, source)
    destination = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(target)
    fs.mkdirs(destination.getParent())
    if not fs.rename(path, destination):
        raise OSError(f"cannot move {source} to {target}")


def is_file(spark: SparkSession, uri: str) -> bool:
    fs, path = _fs_and_path(spark, uri)
    return bool(fs.exists(path)) and bool(fs.getFileStatus(path).isFile())


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    fs, path = _fs_and_path(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    fs, path = _fs_and_path(spark, uri)
    stream = fs.open(path)
    try:
        # py4j hands a returned byte[] over as bytes in one piece
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def fetch_to_local(spark: SparkSession, uri: str) -> str:
    """Copy a remote file next to the driver; Keras only loads weights from a local path."""
    local = local_path(uri)
    if local is not None:
        if not os.path.exists(local):
            raise FileNotFoundError(f"weights file not found: {uri}")
        return local
    fs, path = _fs_and_path(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"weights file not found: {uri}")
    local = os.path.join(tempfile.mkdtemp(prefix="fruits-weights-"), os.path.basename(uri))
    fs.copyToLocalFile(False, path, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(local), True)
    return local


def write_stats(spark: SparkSession, layout: Layout, step: str, stats: dict) -> None:
    write_bytes(spark, layout.stats(step), json.dumps(stats, indent=2, sort_keys=True).encode())


def read_stats(spark: SparkSession, layout: Layout, step: str) -> dict:
    if not exists(spark, layout.stats(step)):
        return {}
    return json.loads(read_bytes(spark, layout.stats(step)))
