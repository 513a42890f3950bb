"""Ingestion's transform on small inline DataFrames: labels, statuses, reasons, duplicates."""

from __future__ import annotations

import datetime as dt
import hashlib

from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from fruits_spark import storage
from fruits_spark.ingest import (
    BINARY_FILE_SCHEMA,
    IngestParams,
    extract,
    inspect_source,
    label_column,
    read_tasks,
    transform,
)
from tests.corpus import awkward_files, write_mixed_folder

ROOT = "file:/data/in"


def binary_files(spark, files: dict[str, bytes]):
    moment = dt.datetime(2026, 11, 23, 8, 0)
    rows = [(f"{ROOT}/{name}", moment, len(data), bytearray(data)) for name, data in files.items()]
    return spark.createDataFrame(rows, BINARY_FILE_SCHEMA)


def test_label_is_the_parent_folder_and_root_files_are_unlabelled(spark):
    paths = spark.createDataFrame(
        [(f"{ROOT}/apple/a.jpg",), (f"{ROOT}/uploads/dt=2026-11-23/mango/b.png",), (f"{ROOT}/c.jpg",)],
        "path string",
    )
    actual = paths.select("path", label_column(F.col("path"), ROOT + "/").alias("label"))
    expected = spark.createDataFrame(
        [
            (f"{ROOT}/apple/a.jpg", "apple"),
            (f"{ROOT}/uploads/dt=2026-11-23/mango/b.png", "mango"),
            (f"{ROOT}/c.jpg", "unlabelled"),
        ],
        "path string, label string",
    )
    assertDataFrameEqual(actual, expected)


def test_every_file_gets_a_status_and_a_reason(spark):
    corpus = {
        name: data for name, (data, _) in awkward_files().items() if not name.split("/")[-1].startswith(".")
    }
    corpus.pop("raspberry/_tmp/partial.jpg")  # Spark's own reader never lists hidden files
    corpus["raspberry/copy.jpg"] = corpus["lemon/grey.jpg"]
    corpus["apple/huge.jpg"] = b"\xff" * 200_000
    classified = transform(binary_files(spark, corpus), IngestParams(ROOT, max_file_bytes=100_000))

    outcomes = {name: outcome for name, (_, outcome) in awkward_files().items()}
    expected_rows = []
    for name in corpus:
        status_reason = {
            "raspberry/copy.jpg": ("duplicate", "duplicate"),
            "apple/huge.jpg": ("rejected", "too_large"),
            "raspberry/notes.txt": ("ignored", "not_an_image_name"),
        }.get(name)
        if status_reason is None:
            outcome = outcomes[name]
            status_reason = ("ok", None) if outcome == "ok" else ("rejected", outcome)
        expected_rows.append((f"{ROOT}/{name}", name.split("/")[0], *status_reason))
    expected = spark.createDataFrame(expected_rows, "path string, label string, status string, reason string")
    assertDataFrameEqual(classified.select("path", "label", "status", "reason"), expected)


def test_duplicates_keep_the_first_path_and_name_it(spark):
    data = awkward_files()["lemon/grey.jpg"][0]
    classified = transform(binary_files(spark, {"b/2.jpg": data, "a/1.jpg": data}), IngestParams(ROOT))
    rows = {r["path"]: r for r in classified.collect()}
    assert rows[f"{ROOT}/a/1.jpg"]["status"] == "ok"
    assert rows[f"{ROOT}/b/2.jpg"]["status"] == "duplicate"
    assert rows[f"{ROOT}/b/2.jpg"]["detail"] == f"same content as {ROOT}/a/1.jpg"
    assert rows[f"{ROOT}/a/1.jpg"]["content_hash"] == rows[f"{ROOT}/b/2.jpg"]["content_hash"]
    assert rows[f"{ROOT}/a/1.jpg"]["content"].startswith(b"P6\n")


def _exchanged_columns(df) -> list[list[str]]:
    """The columns every shuffle or broadcast of ``df``'s physical plan moves (AQE: its current plan)."""
    found, pending = [], [df._jdf.queryExecution().executedPlan()]
    while pending:
        node = pending.pop()
        if node.nodeName() == "AdaptiveSparkPlan":
            node = node.executedPlan()
        if node.nodeName().endswith("QueryStage"):
            node = node.plan()
        if "Exchange" in node.nodeName():
            output = node.output()
            found.append([output.apply(i).name() for i in range(output.size())])
        children = node.children()
        pending.extend(children.apply(i) for i in range(children.size()))
    return found


def test_duplicates_are_found_without_moving_image_bytes(spark):
    data = awkward_files()["lemon/grey.jpg"][0]
    files = {"b/2.jpg": data, "a/1.jpg": data, "c/3.jpg": awkward_files()["mango/rgba.PNG"][0]}
    classified = transform(binary_files(spark, files), IngestParams(ROOT))
    exchanged = _exchanged_columns(classified)
    # the duplicate ranking shuffles (path, hash) and broadcasts the duplicates it found: no pixels, no file
    assert exchanged, "expected the duplicate search's shuffle in the plan"
    assert all("content" not in columns for columns in exchanged), exchanged
    assert {"path", "content_hash"} <= {name for columns in exchanged for name in columns}


def test_a_small_day_gets_one_read_task_a_core_and_a_large_one_several():
    """Tasks cost CPU whatever they hold: the demo's 40 thumbnails get one a core; a night of phone photos
    gets several a core (the last wave leaves a core idle for a fraction of a task), a small cluster's worth
    of cores the same."""
    thumbnails = read_tasks(listed_bytes=40 * 5_000, cores=2)
    phone_night = read_tasks(listed_bytes=2_000 * 2_700_000, cores=2)
    middle = read_tasks(listed_bytes=12 * 1024 * 1024, cores=2)
    assert thumbnails == 2
    assert phone_night == 8
    assert thumbnails < middle < phone_night
    assert read_tasks(listed_bytes=2_000 * 2_700_000, cores=16) == 64


def test_local_files_read_by_the_python_workers_come_out_as_the_jvms_bytes_do(spark, tmp_path, sample_dir):
    """``read_files``: each worker reads the files it decodes from their paths; every row, hash and curated
    copy is the one the JVM's read gives, and each file is decoded once."""
    folder = tmp_path / "in"
    write_mixed_folder(folder, [sorted((sample_dir / "apple").glob("*.jpg"))[0]])
    (folder / "apple" / "huge.jpg").write_bytes(b"\xff" * 200_000)
    files, unlisted = extract(spark, str(folder), storage.list_files(spark, str(folder)))
    root = storage.qualify(spark, str(folder))
    outcomes = {}
    for read_files in (False, True):
        inspected = spark.sparkContext.accumulator(0)
        params = IngestParams(root, 100_000, rows_inspected=inspected, read_files=read_files)
        outcomes[read_files] = transform(files, params, unlisted).collect()
        # each file with an image name under the size limit decoded once: each of them has a hash
        assert inspected.value == sum(row["content_hash"] is not None for row in outcomes[read_files])
    assert outcomes[True]
    assert sorted(outcomes[True]) == sorted(outcomes[False])
    assert {row["status"] for row in outcomes[True]} == {"ok", "rejected", "duplicate", "ignored"}


def test_a_local_file_that_cannot_be_read_or_grew_too_large_is_rejected_with_its_reason(tmp_path):
    """What the JVM's listing cannot see: a file that became unreadable or too large before its worker read
    it is a rejection with a reason, never a failed task."""
    good = awkward_files()["lemon/grey.jpg"][0]
    (tmp_path / "a.jpg").write_bytes(good)
    (tmp_path / "folder.jpg").mkdir()
    params = IngestParams("file:" + str(tmp_path), max_file_bytes=len(good), read_files=True)
    read = inspect_source(f"file:{tmp_path}/a.jpg", params)
    assert read.reason is None
    assert read.content_hash == hashlib.sha256(good).hexdigest()
    directory = inspect_source(f"file:{tmp_path}/folder.jpg", params)
    assert (directory.reason, directory.detail.split(":")[0]) == ("unreadable", "IsADirectoryError")
    missing = inspect_source(f"file:{tmp_path}/gone.jpg", params)
    assert (missing.reason, missing.detail.split(":")[0]) == ("unreadable", "FileNotFoundError")
    smaller = IngestParams(params.input_root, max_file_bytes=len(good) - 1, read_files=True)
    assert inspect_source(f"file:{tmp_path}/a.jpg", smaller).reason == "too_large"
