"""Runs over several days: a photo seen before is copied, not inferred again.

Day one: the 40 bundled images. Day two: the same 40 files again plus 8 new ones (sample images with altered
pixels, so their hashes differ). Random weights (the `random_weights` fixture): runs on a clean clone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fruits_platform.pipeline import PipelineParams
from tests.inprocess import QUALITY_OFF, run_pipeline

pytestmark = pytest.mark.slow

DAY_ONE, DAY_TWO, DAY_THREE = "2026-11-21", "2026-11-22", "2026-11-23"
LABELS = ("apple", "lemon", "mango", "raspberry")
NEW_PER_LABEL = 2


def copy_sample(sample_dir: Path, target: Path) -> None:
    for label in LABELS:
        shutil.copytree(sample_dir / label, target / label)


def add_altered_images(sample_dir: Path, target: Path) -> list[Path]:
    """New photos: sample images with a few pixels changed, re-encoded, so their content hash is new."""
    made = []
    for label in LABELS:
        for i, source in enumerate(sorted((sample_dir / label).glob("*.jpg"))[:NEW_PER_LABEL]):
            pixels = np.asarray(Image.open(source).convert("RGB")).copy()
            pixels[: 8 + i, : 8 + i] = [255, 0, 255]
            path = target / label / f"new_{i}_{source.name}"
            Image.fromarray(pixels).save(path, format="JPEG", quality=92)
            made.append(path)
    return made


def run(input_dir: Path, output: Path, day: str, weights: Path, **options) -> dict:
    """One day's run, its steps in process (``tests.inprocess``) with the arguments run-local submits."""
    params = PipelineParams(
        str(input_dir), str(output), day, weights=str(weights), k=3, **{**QUALITY_OFF, **options}
    )
    code, printed = run_pipeline(params)
    assert code == 0, printed[-3000:]
    report = json.loads((output / "reports" / f"dt={day}" / "report.json").read_text())
    features_stats = json.loads((output / "_stats" / f"dt={day}" / "features.json").read_text())
    return {"report": report, "features": features_stats}


def features_by_hash(output: Path, day: str) -> dict[str, dict]:
    rows = pq.read_table(output / "features" / f"dt={day}").to_pylist()
    assert len(rows) == len({r["content_hash"] for r in rows})  # one row per photo and day
    return {r["content_hash"]: r for r in rows}


def float32_bytes(values) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


@pytest.fixture(scope="module")
def days(tmp_path_factory, sample_dir, random_weights, spark):
    """Day one, day two (40 repeated + 8 new), then a backfill rerun of day one; outputs kept per stage."""
    root = tmp_path_factory.mktemp("reuse")
    day_two_input = root / "day_two"
    copy_sample(sample_dir, day_two_input)
    new_images = add_altered_images(sample_dir, day_two_input)
    output = root / "out"
    first = run(sample_dir, output, DAY_ONE, random_weights)
    first_rows = features_by_hash(output, DAY_ONE)
    second = run(day_two_input, output, DAY_TWO, random_weights)
    second_rows = features_by_hash(output, DAY_TWO)
    backfill = run(sample_dir, output, DAY_ONE, random_weights)
    return {
        "root": root,
        "output": output,
        "day_two_input": day_two_input,
        "new_images": new_images,
        "first": first,
        "first_rows": first_rows,
        "second": second,
        "second_rows": second_rows,
        "backfill": backfill,
        "backfill_rows": features_by_hash(output, DAY_ONE),
    }


def test_first_day_infers_everything_and_says_there_was_no_history(days):
    counts = days["first"]["report"]["counts"]
    assert (counts["ok"], counts["featurised"], counts["reused"]) == (40, 40, 0)
    assert days["first"]["report"]["history"] == "none"
    assert days["first"]["features"]["rows_inferred"] == 40


def test_second_day_runs_the_cnn_on_the_new_photos_only(days):
    report, stats = days["second"]["report"], days["second"]["features"]
    counts = report["counts"]
    assert len(days["new_images"]) == 8
    assert (counts["ok"], counts["featurised"], counts["reused"]) == (48, 8, 40)
    # the accumulator counts the rows that entered the UDF: the CNN saw the 8 new photos and nothing else
    assert stats["rows_inferred"] == 8
    # a photo repeated on another day is a reused row of that day, not a duplicate
    assert (counts["duplicates"], counts["rejected"]) == (0, 0)
    assert report["reconciled"] is True
    assert report["reused_from"] == {DAY_ONE: 40}
    html = (days["output"] / "reports" / f"dt={DAY_TWO}" / "report.html").read_text()
    assert "<tr><th>featurised</th><td>8</td></tr>" in html
    assert "<tr><th>reused</th><td>40</td></tr>" in html


def test_reused_rows_equal_the_first_days_bit_for_bit_with_this_days_paths(days):
    first, second = days["first_rows"], days["second_rows"]
    assert len(second) == 48
    repeated = set(first) & set(second)
    assert len(repeated) == 40
    prefix = f"file:{days['day_two_input']}/"
    for h in repeated:
        assert float32_bytes(second[h]["features"]) == float32_bytes(first[h]["features"])
        assert second[h]["path"].startswith(prefix)
        assert second[h]["embedding"] == first[h]["embedding"]
    assert all(len(second[h]["features"]) == 1280 for h in set(second) - repeated)


def test_backfill_rerun_of_a_processed_day_infers_nothing_and_changes_nothing(days):
    report, stats = days["backfill"]["report"], days["backfill"]["features"]
    assert (report["counts"]["featurised"], report["counts"]["reused"]) == (0, 40)
    assert stats["rows_inferred"] == 0
    assert stats["model_builds"] == 0  # no UDF ran: not even TensorFlow was imported on a worker
    assert report["reconciled"] is True
    first, again = days["first_rows"], days["backfill_rows"]
    assert set(again) == set(first)
    assert all(float32_bytes(again[h]["features"]) == float32_bytes(first[h]["features"]) for h in first)
    # the staged copy is gone, the day's index is back
    output = days["output"]
    assert not (output / "_staging" / "features_reused" / f"dt={DAY_ONE}").exists()
    assert (output / "features_index" / f"dt={DAY_ONE}" / "_SUCCESS").exists()


def test_another_input_size_reuses_nothing(days, random_weights):
    third = run(days["day_two_input"], days["output"], DAY_THREE, random_weights, input_size=96)
    counts = third["report"]["counts"]
    assert (counts["featurised"], counts["reused"]) == (48, 0)
    assert third["features"]["rows_inferred"] == 48
    assert third["report"]["history"].startswith("2 partitions")  # history was there, in another space


def test_recompute_infers_every_image(days, random_weights):
    again = run(days["day_two_input"], days["output"], DAY_TWO, random_weights, recompute=True)
    counts = again["report"]["counts"]
    assert (counts["ok"], counts["featurised"], counts["reused"]) == (48, 48, 0)
    assert again["features"]["rows_inferred"] == 48
    assert again["report"]["history"] == "not used: --recompute"
