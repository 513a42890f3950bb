"""The reuse lookup on real Spark with synthetic feature history: what counts as history and what is copied.

No CNN here: features/ and images/ partitions are written by hand, so every case runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from fruits_spark import reuse
from fruits_spark.layout import Layout
from tests.dags import DAGS_FOLDER, load_bag, load_dag

EMBEDDING = "w1abc-s224"
DAY_ONE, DAY_TWO, TODAY = "2026-11-20", "2026-11-21", "2026-11-22"
FEATURES_SCHEMA = "path string, label string, content_hash string, features array<float>"


def vector(seed: int) -> list[float]:
    # float32 values with full mantissas: a lossy copy (double round trip, recomputation) would differ
    return np.random.default_rng(seed).normal(size=1280).astype(np.float32).tolist()


def write_features(spark, output: str, day: str, hashes: list[str], embedding: str = EMBEDDING, index=True):
    """A complete features partition of ``day`` (and its index, as the step writes it after success)."""
    layout = Layout(output, day)
    rows = [(f"file:/in/{day}/apple/{h}.jpg", "apple", h, vector(int(h[1:]))) for h in hashes]
    spark.createDataFrame(rows, FEATURES_SCHEMA).withColumn("embedding", F.lit(embedding)).write.mode(
        "overwrite"
    ).parquet(layout.dataset("features"))
    if index:
        reuse.write_index(spark, layout)
    return layout


def write_images(spark, output: str, day: str, hashes: list[str]) -> Layout:
    layout = Layout(output, day)
    rows = [(f"file:/in/{day}/lemon/{h}.jpg", "lemon", h, bytearray(b"png")) for h in hashes]
    spark.createDataFrame(rows, "path string, label string, content_hash string, content binary").write.mode(
        "overwrite"
    ).parquet(layout.dataset("images"))
    return layout


def as_dict(df, key="content_hash"):
    return {row[key]: row.asDict() for row in df.collect()}


@pytest.fixture(params=["path", "file-uri"])
def output(request, tmp_path) -> str:
    """The same code path serves local paths and Hadoop URIs (file:// here, s3:// on EMR)."""
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_rows_of_the_same_embedding_are_copied_bit_for_bit_with_todays_path_and_label(spark, output):
    write_features(spark, output, DAY_ONE, ["h1", "h2", "h3"])
    today = write_images(spark, output, TODAY, ["h1", "h2", "h9"])

    plan = reuse.plan(spark, today, EMBEDDING)

    assert (plan.n_images, plan.n_reused, plan.n_to_infer) == (3, 2, 1)
    assert plan.history == "1 partition (1 indexed, 0 scanned)"
    assert plan.reused_from == {DAY_ONE: 2}
    reused = as_dict(reuse.as_featurized(plan))
    assert set(reused) == {"h1", "h2"}
    for h in ("h1", "h2"):
        assert reused[h]["path"] == f"file:/in/{TODAY}/lemon/{h}.jpg"
        assert reused[h]["label"] == "lemon"
        assert reused[h]["error"] is None
        # bit for bit: the float32 bytes, not a tolerance
        stored = np.asarray(reused[h]["features"], dtype=np.float32)
        assert stored.tobytes() == np.asarray(vector(int(h[1:])), dtype=np.float32).tobytes()
    assert {r["content_hash"] for r in reuse.skip_hashes(plan).collect()} == {"h1", "h2"}


def test_another_weights_file_or_input_size_reuses_nothing(spark, tmp_path):
    write_features(spark, str(tmp_path), DAY_ONE, ["h1", "h2"])
    today = write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])

    for other in ("w1abc-s96", "w2def-s224"):
        plan = reuse.plan(spark, today, other)
        assert (plan.n_reused, plan.n_to_infer) == (0, 2), other
        assert reuse.skip_hashes(plan) is None


def test_the_earliest_day_holding_a_photo_is_the_source(spark, tmp_path):
    write_features(spark, str(tmp_path), DAY_TWO, ["h1"])
    write_features(spark, str(tmp_path), DAY_ONE, ["h1", "h2"])
    today = write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])

    plan = reuse.plan(spark, today, EMBEDDING)

    assert plan.reused_from == {DAY_ONE: 2}
    assert plan.history == "2 partitions (2 indexed, 0 scanned)"


def test_without_history_everything_is_inferred_and_said(spark, tmp_path):
    today = write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])

    plan = reuse.plan(spark, today, EMBEDDING)

    assert (plan.history, plan.n_reused, plan.n_to_infer) == ("none", 0, 2)


def test_a_half_written_partition_is_never_history(spark, tmp_path):
    """No _SUCCESS on features/dt=D: a crashed or running write. Its index, if any, promises nothing."""
    written = write_features(spark, str(tmp_path), DAY_ONE, ["h1", "h2"])
    (Path(written.dataset("features")) / "_SUCCESS").unlink()
    today = write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])

    plan = reuse.plan(spark, today, EMBEDDING)

    assert (plan.history, plan.n_reused) == ("none", 0)


def test_a_partition_without_index_is_scanned_for_two_columns(spark, tmp_path):
    """Days written before the index existed still count; days without an embedding column cannot match."""
    write_features(spark, str(tmp_path), DAY_ONE, ["h1"], index=False)
    legacy = Layout(str(tmp_path), DAY_TWO)
    spark.createDataFrame([("file:/x/h2.jpg", "apple", "h2", vector(2))], FEATURES_SCHEMA).write.parquet(
        legacy.dataset("features")
    )
    today = write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])

    plan = reuse.plan(spark, today, EMBEDDING)

    assert plan.history == "2 partitions (0 indexed, 2 scanned)"
    assert plan.reused_from == {DAY_ONE: 1}


def test_an_unreadable_history_is_not_an_error(spark, tmp_path):
    written = write_features(spark, str(tmp_path), DAY_ONE, ["h1"])
    index = Path(written.root(reuse.INDEX)) / f"dt={DAY_ONE}"
    for part in index.glob("part-*.parquet"):
        part.write_bytes(b"not parquet at all")
    for checksum in index.glob(".*.crc"):
        checksum.unlink()
    today = write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])

    plan = reuse.plan(spark, today, EMBEDDING)

    assert plan.history.startswith("unreadable: ")
    assert (plan.n_reused, plan.n_to_infer) == (0, 2)


def test_recompute_reuses_nothing(spark, tmp_path):
    write_features(spark, str(tmp_path), DAY_ONE, ["h1"])
    today = write_images(spark, str(tmp_path), TODAY, ["h1"])

    plan = reuse.plan(spark, today, EMBEDDING, recompute=True)

    assert (plan.history, plan.n_reused, plan.n_to_infer) == ("not used: --recompute", 0, 1)


def test_a_rerun_reuses_its_own_partition_while_overwriting_it(spark, tmp_path):
    """The day's own previous output is a source: staged first, so overwriting it cannot break the read."""
    day = write_features(spark, str(tmp_path), TODAY, ["h1", "h2"])
    write_images(spark, str(tmp_path), TODAY, ["h1", "h2"])
    before = as_dict(spark.read.parquet(day.dataset("features")))

    plan = reuse.plan(spark, day, EMBEDDING)
    # while the partition is rewritten its index is gone: no concurrent run takes it as history
    assert not (Path(day.root(reuse.INDEX)) / f"dt={TODAY}").exists()
    reuse.as_featurized(plan).select(
        "path", "label", "content_hash", "features", F.lit(EMBEDDING).alias("embedding")
    ).write.mode("overwrite").parquet(day.dataset("features"))
    reuse.finish(spark, day)

    assert (plan.n_reused, plan.n_to_infer, plan.reused_from) == (2, 0, {TODAY: 2})
    after = as_dict(spark.read.parquet(day.dataset("features")))
    assert {h: row["features"] for h, row in after.items()} == {
        h: row["features"] for h, row in before.items()
    }
    assert (Path(day.root(reuse.INDEX)) / f"dt={TODAY}" / "_SUCCESS").exists()
    assert not Path(reuse.staging_uri(day)).exists()


# -- forcing: --recompute from the command line and both DAGs down to the features step ----------------------
def test_recompute_reaches_the_features_step_only():
    from fruits_platform.pipeline import PipelineParams, plan

    forced = {s.name: s.args for s in plan(PipelineParams("in", "out", TODAY, recompute=True))}
    default = {s.name: s.args for s in plan(PipelineParams("in", "out", TODAY))}

    assert "--recompute" in forced["features"]
    assert all("--recompute" not in args for name, args in forced.items() if name != "features")
    assert all("--recompute" not in args for args in default.values())


def test_run_local_accepts_recompute():
    from fruits_platform.cli import build_parser

    args = build_parser().parse_args(["run-local", "--input", "i", "--output", "o", "--recompute"])
    assert args.recompute is True
    assert build_parser().parse_args(["run-local", "--input", "i", "--output", "o"]).recompute is False


@pytest.mark.parametrize("dag_file", ["fruits_features_local.py", "fruits_features_emr.py"])
def test_both_dags_have_a_recompute_param_that_defaults_to_reuse(dag_file):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    (dag,) = load_bag(DAGS_FOLDER / dag_file).dags.values()
    assert dag.params.validate()["recompute"] is False
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError):
        params.update({"recompute": "yes"})  # a ParamsDict validates on update


def test_the_local_dag_passes_recompute_into_the_pipeline():
    """The run's params become PipelineParams by name: recompute from the trigger form reaches the step."""

    from fruits_platform.pipeline import PipelineParams

    dag = load_dag("fruits_features_local")
    for recompute in (False, True):
        params = {**dag.params.validate(), "dt": TODAY, "recompute": recompute}
        assert PipelineParams.from_mapping(params).recompute is recompute
