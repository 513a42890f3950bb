"""The quality step: near-duplicates, suspicious labels and drift between days.

Its transforms on tiny DataFrames of hand-made vectors, each against an oracle computed here with numpy;
then whole runs of the pipeline (``tests.inprocess``) over two days, a rerun and a run with every check off.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fruits_platform.assets import event_extra
from fruits_platform.pipeline import PipelineParams
from fruits_spark import contract, quality, quality_report
from tests.inprocess import run_pipeline

DIM = 64
DAY, EARLIER = "2026-11-22", "2026-11-21"


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def basis(i: int) -> np.ndarray:
    vector = np.full(DIM, 0.05)
    vector[i] = 1.0
    return vector


def at_cosine(base: np.ndarray, cosine: float, towards: int) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from ``unit(base)``, turned towards axis ``towards``."""
    a = unit(base)
    other = np.zeros(DIM)
    other[towards] = 1.0
    other = unit(other - (other @ a) * a)
    return cosine * a + np.sqrt(1.0 - cosine**2) * other


def frame(spark, rows: list[tuple[str, str, str, str, np.ndarray]]):
    """path, label, content_hash, dt, unit from (path, label, hash, dt, vector), through the step's own
    normalisation."""
    features = spark.createDataFrame(
        [(p, label, h, dt, [float(v) for v in vector]) for p, label, h, dt, vector in rows],
        "path string, label string, content_hash string, dt string, features array<float>",
    )
    return quality.unit_vectors(features)


@pytest.fixture(params=[quality.OnExecutors, quality.OnDriver], ids=["executors", "driver"])
def way(request):
    """Each check both ways the step runs it: as Spark jobs (any day) and on the driver (a small day)."""
    return request.param


def test_a_copy_is_found_and_a_photo_that_is_not_one_is_not(spark, way):
    photo = basis(0)
    copy = at_cosine(photo, 0.998, 7)
    other_view = at_cosine(photo, 0.90, 9)  # the same fruit, not a copy: below the threshold
    earlier_copy = at_cosine(basis(3), 0.999, 11)
    day = frame(
        spark,
        [
            ("d/photo.jpg", "apple", "h1", DAY, photo),
            ("d/copy.jpg", "lemon", "h2", DAY, copy),
            ("d/view.jpg", "apple", "h3", DAY, other_view),
            ("d/late.jpg", "mango", "h4", DAY, basis(3)),
            # the same bytes as the photo on the earlier day: the same photo, never a pair
            ("d/again.jpg", "apple", "h5", DAY, basis(20)),
        ],
    )
    history = frame(
        spark,
        [
            ("e/first.jpg", "mango", "h6", EARLIER, earlier_copy),
            ("e/first-again.jpg", "mango", "h6", "2026-11-20", earlier_copy),
            ("e/same.jpg", "apple", "h5", EARLIER, basis(20)),
        ],
    )
    found = {
        (r["path"], r["other_path"]): r.asDict() for r in way(day, history).near_duplicates(0.95).collect()
    }
    assert set(found) == {("d/photo.jpg", "d/copy.jpg"), ("d/late.jpg", "e/first-again.jpg")}
    pair = found[("d/photo.jpg", "d/copy.jpg")]
    assert pair["similarity"] == pytest.approx(float(unit(photo) @ unit(copy)), abs=1e-5)
    assert (pair["label"], pair["other_label"], pair["other_dt"]) == ("apple", "lemon", DAY)
    # a photo seen on two earlier days is named once, on the earliest
    assert found[("d/late.jpg", "e/first-again.jpg")]["other_dt"] == "2026-11-20"
    # without the history, the pairs of the day only
    assert {(r["path"], r["other_path"]) for r in way(day, None).near_duplicates(0.95).collect()} == {
        ("d/photo.jpg", "d/copy.jpg")
    }


def test_a_burst_keeps_each_photos_closest_partners_and_stays_one_group(spark, way):
    rng = np.random.default_rng(7)
    burst = [
        (f"b/{i}.jpg", "apple", f"h{i:02d}", DAY, basis(0) + rng.normal(0, 0.002, DIM)) for i in range(25)
    ]
    pairs = [r.asDict() for r in way(frame(spark, burst), None).near_duplicates(0.95).collect()]
    partners: dict[str, int] = {}
    for pair in pairs:
        for path in (pair["path"], pair["other_path"]):
            partners[path] = partners.get(path, 0) + 1
    # all 300 pairs are above the threshold; a photo keeps its closest ones in each bucket
    assert len(partners) == 25
    assert len(pairs) < 300
    assert min(partners.values()) >= quality.MAX_PARTNERS
    assert quality_report.count_groups(pairs, DAY) == 1


def test_groups_are_the_connected_pairs_across_days():
    pairs = [
        {"path": "a", "other_path": "b", "other_dt": DAY},
        {"path": "b", "other_path": "c", "other_dt": DAY},
        {"path": "d", "other_path": "a", "other_dt": EARLIER},  # the earlier a: another photo
        {"path": "e", "other_path": "f", "other_dt": DAY},
    ]
    assert quality_report.count_groups(pairs, DAY) == 3
    assert quality_report.count_groups(pairs[:2], DAY) == 1
    assert quality_report.count_groups([], DAY) == 0


def labelled(label: str, axis: int, n: int, start: int = 0) -> list[tuple]:
    rng = np.random.default_rng(axis)
    return [
        (f"{label}/{i}.jpg", label, f"{label}{i}", DAY, basis(axis) + rng.normal(0, 0.05, DIM))
        for i in range(start, start + n)
    ]


def test_a_photo_filed_under_the_wrong_label_is_flagged_with_its_margin(spark, way):
    rows = labelled("apple", 0, 6) + labelled("lemon", 1, 6)
    moved = ("apple/moved.jpg", "apple", "moved", DAY, basis(1) + 0.02)  # a lemon filed as an apple
    rows.append(moved)
    checks = way(frame(spark, rows), None)
    sums, _, _ = checks.sums()
    flagged = [r.asDict() for r in checks.audit(sums, 0.05).collect()]
    assert [(r["path"], r["label"], r["nearest_label"]) for r in flagged] == [
        ("apple/moved.jpg", "apple", "lemon")
    ]
    # the oracle: cosine to lemon's centroid minus cosine to apple's centroid without the photo itself
    vectors = {r[0]: unit(r[4]) for r in rows}
    apples = [vectors[r[0]] for r in rows if r[1] == "apple" and r[0] != moved[0]]
    lemons = [vectors[r[0]] for r in rows if r[1] == "lemon"]
    x = vectors[moved[0]]
    expected = x @ unit(np.mean(lemons, axis=0)) - x @ unit(np.mean(apples, axis=0))
    assert flagged[0]["margin"] == pytest.approx(expected, abs=1e-5)
    # a margin larger than the photo's is not reached; a threshold of a clear margin flags no true apple
    assert not checks.audit(sums, expected + 0.01).collect()


def test_the_history_counts_in_the_centroids_and_a_photo_of_the_day_seen_before_counts_once(spark, way):
    day = frame(spark, labelled("apple", 0, 1) + labelled("lemon", 1, 3))
    history = frame(
        spark,
        [(p, label, h, EARLIER, v) for p, label, h, _, v in labelled("apple", 0, 3, start=1)]
        # the day's apple, seen on the earlier day too
        + [("old/apple0.jpg", "apple", "apple0", EARLIER, labelled("apple", 0, 1)[0][4])],
    )
    checks = way(day, history)
    day_sums, every, others = checks.sums()
    assert every["apple"][0] == 4
    assert others["apple"][0] == 3
    sums = quality.add_sums(day_sums, others)
    # alone on the day, the apple has a centroid of its own from the history: not flagged
    assert not checks.audit(sums, 0.05).collect()
    # without the history it is the only apple: nothing to compare with, so never flagged either
    assert not checks.audit(day_sums, 0.0001).collect()


def test_drift_says_missing_new_and_moved_labels(spark, way):
    day = frame(
        spark,
        labelled("apple", 0, 4)
        + [(f"lemon/{i}.jpg", "lemon", f"l{i}", DAY, basis(1) + basis(2)) for i in range(3)]
        + labelled("kiwi", 5, 2),
    )
    history = frame(
        spark,
        [(p, label, h + "old", EARLIER, v) for p, label, h, _, v in labelled("apple", 0, 4)]
        + [(f"lemon/o{i}.jpg", "lemon", f"lo{i}", EARLIER, basis(1)) for i in range(5)]
        + [(f"mango/{i}.jpg", "mango", f"m{i}", EARLIER, basis(3)) for i in range(2)],
    )
    day_sums, every, _ = way(day, history).sums()
    drift = quality_report.drift(day_sums, every, 0.05, has_history=True)
    rows = {row["label"]: row for row in drift["labels"]}
    assert {label: row["status"] for label, row in rows.items()} == {
        "apple": "steady",
        "lemon": "moved",
        "kiwi": "new",
        "mango": "missing",
    }
    assert (rows["lemon"]["count"], rows["lemon"]["history_count"]) == (3, 5)
    expected = 1.0 - unit(basis(1) + basis(2)) @ unit(basis(1))
    assert rows["lemon"]["distance"] == pytest.approx(expected, abs=1e-5)
    words = " ".join(quality_report.drift_words(drift))
    assert "Missing today: mango (2 earlier photos)" in words
    assert "New today, never seen on an earlier day: kiwi (2 photos)" in words
    assert f"lemon ({expected:.3f})" in words
    assert "apple" not in words
    first = quality_report.drift(day_sums, {}, 0.05, has_history=False)
    assert "No earlier day" in quality_report.drift_words(first)[0]


def test_the_thresholds_are_bounded_and_zero_turns_a_check_off():
    for name in ("near_duplicate_similarity", "label_margin", "drift_threshold"):
        assert contract.PARAMS[name].validate(0) == 0
        with pytest.raises(ValueError, match=f"{name} must be within 0..1000"):
            contract.PARAMS[name].validate(1001)
    with pytest.raises(ValueError, match=r"must be 0 \(off\) or within 800\.\.1000, got 500"):
        contract.PARAMS["near_duplicate_similarity"].validate(500)
    assert contract.param_steps("label_margin") == ("quality",)


def ppm(color: tuple[int, int, int], size: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PPM")
    return buffer.getvalue()


def test_the_report_section_renders_from_the_summary_alone():
    thumb = quality_report.thumbnail(ppm((200, 30, 30)))
    assert thumb.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1])))
    assert max(image.size) == quality_report.THUMBNAIL_SIDE
    summary = {
        "quality": {
            "history_days": [EARLIER],
            "label_audit": {
                "margin": 0.05,
                "flagged": 1,
                "dataset": "/o/label_audit/dt=x",
                "photos": [
                    {"path": "a/1.jpg", "label": "a", "nearest_label": "b", "margin": 0.2, "thumbnail": thumb}
                ],
            },
        }
    }
    section = quality_report.report_html(summary)
    assert f'src="{thumb}"' in section
    assert "<td>a/1.jpg</td><td>a</td><td>b</td><td>0.200</td>" in section
    assert "Near-duplicates: off" in section
    assert "Drift: off" in section
    assert quality_report.report_html({}) == ""


# --- whole runs ---------------------------------------------------------------------------------------

LABELS = ("apple", "lemon", "mango")


def day_input(sample_dir: Path, target: Path, per_label: int, first: int = 0) -> Path:
    for label in LABELS:
        (target / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[first : first + per_label]:
            shutil.copyfile(path, target / label / path.name)
    return target


def run_day(input_dir: Path, output: Path, day: str, weights: Path, **options) -> dict:
    params = PipelineParams(str(input_dir), str(output), day, weights=str(weights), k=2, **options)
    code, printed = run_pipeline(params)
    assert code == 0, printed[-3000:]
    report = json.loads((output / "reports" / f"dt={day}" / "report.json").read_text())
    html = (output / "reports" / f"dt={day}" / "report.html").read_text()
    return {"report": report, "html": html, "printed": printed}


def rows_of(output: Path, dataset: str, day: str) -> list[dict]:
    return sorted(pq.read_table(output / dataset / f"dt={day}").to_pylist(), key=lambda r: sorted(r.items()))


@pytest.fixture(scope="module")
def days(tmp_path_factory, sample_dir, random_weights, spark):
    """Day one, then day two (new photos, two of day one's copied with a few pixels changed, one lemon
    filed as an apple), day two again, then day two with every check off."""
    root = tmp_path_factory.mktemp("quality")
    first = day_input(sample_dir, root / "one", 3)
    second = day_input(sample_dir, root / "two", 3, first=3)
    for i, source in enumerate(sorted((first / "apple").glob("*.jpg"))[:2]):
        pixels = np.asarray(Image.open(source).convert("RGB")).copy()
        pixels[:2, :2] = 255
        Image.fromarray(pixels).save(second / "apple" / f"edited_{i}.jpg", quality=95)
    shutil.copyfile(sorted((sample_dir / "lemon").glob("*.jpg"))[-1], second / "apple" / "filed_wrong.jpg")
    output = root / "out"
    # random weights put every photo near every other: low thresholds flag something on each check
    options = {"near_duplicate_similarity": 990, "label_margin": 1, "drift_threshold": 1}
    runs = {"one": run_day(first, output, EARLIER, random_weights, **options)}
    runs["two"] = run_day(second, output, DAY, random_weights, **options)
    runs["two_rows"] = {name: rows_of(output, name, DAY) for name in ("near_duplicates", "label_audit")}
    runs["again"] = run_day(second, output, DAY, random_weights, **options)
    runs["again_rows"] = {name: rows_of(output, name, DAY) for name in ("near_duplicates", "label_audit")}
    runs["off"] = run_day(
        second, output, DAY, random_weights, near_duplicate_similarity=0, label_margin=0, drift_threshold=0
    )
    return {"output": output, **runs}


@pytest.mark.slow
def test_the_datasets_are_published_counted_and_announced(days):
    output, report = days["output"], days["two"]["report"]
    rows = days["two_rows"]
    assert {"near_duplicates", "label_audit"} <= set(report["published"])
    assert report["counts"]["near_duplicate_pairs"] == len(rows["near_duplicates"]) > 0
    # random weights: nothing says which label a photo belongs to, so the audit may flag none (its
    # transform's own test flags a moved photo); whatever it flags is counted and shown
    assert report["counts"]["suspicious_labels"] == len(rows["label_audit"])
    pairs = [{k: r[k] for k in ("path", "other_path", "other_dt")} for r in rows["near_duplicates"]]
    assert report["counts"]["near_duplicate_groups"] == quality_report.count_groups(pairs, DAY)
    assert {r["other_dt"] for r in rows["near_duplicates"]} <= {DAY, EARLIER}
    found = report["quality"]["near_duplicates"]
    against_day_one = sum(r["other_dt"] == EARLIER for r in rows["near_duplicates"])
    assert (found["within_day"], found["against_history"]) == (
        len(rows["near_duplicates"]) - against_day_one,
        against_day_one,
    )
    # the photos edited after day one are found against it
    edited = {r["path"].rsplit("/", 1)[-1] for r in rows["near_duplicates"] if r["other_dt"] == EARLIER}
    assert {"edited_0.jpg", "edited_1.jpg"} <= edited
    assert all(r["similarity"] >= 0.99 and r["path"] != r["other_path"] for r in rows["near_duplicates"])
    assert all(r["margin"] >= 0.001 and r["label"] != r["nearest_label"] for r in rows["label_audit"])
    extra = event_extra(report, str(output), "features")
    for name in ("near_duplicates", "label_audit"):
        assert extra["datasets"][name].endswith(f"/{name}/dt={DAY}")
        assert not (output / "_staging" / name / f"dt={DAY}").exists()
    html = days["two"]["html"]
    assert "<h2>Data quality</h2>" in html
    assert f"1 earlier day(s), {EARLIER}" in html
    shown = report["quality"]["label_audit"]["photos"]
    assert len(shown) == min(len(rows["label_audit"]), quality.REPORT_PHOTOS)
    assert [p["margin"] for p in shown] == sorted((p["margin"] for p in shown), reverse=True)
    assert all(p["thumbnail"] in html for p in shown)
    assert [row["label"] for row in report["quality"]["drift"]["labels"]] == sorted(LABELS)
    assert days["one"]["report"]["quality"]["history_days"] == []
    assert "No earlier day of this embedding" in days["one"]["html"]


@pytest.mark.slow
def test_a_rerun_recomputes_the_day_against_its_earlier_days_only(days):
    assert days["again_rows"] == days["two_rows"]
    again = days["again"]["report"]
    assert again["quality"]["history_days"] == [EARLIER]  # never the day's own earlier partition
    for key in ("near_duplicate_pairs", "near_duplicate_groups", "suspicious_labels"):
        assert again["counts"][key] == days["two"]["report"]["counts"][key]
    assert again["quality"]["drift"] == days["two"]["report"]["quality"]["drift"]


@pytest.mark.slow
def test_checks_turned_off_leave_no_partition_of_the_day(days):
    output, off = days["output"], days["off"]
    for name in ("near_duplicates", "label_audit"):
        assert not (output / name / f"dt={DAY}").exists()
        assert name not in off["report"]["published"]
        assert (output / name / f"dt={EARLIER}").exists()  # other days keep theirs
    assert off["report"]["counts"]["near_duplicate_pairs"] == 0
    assert "Near-duplicates: off" in off["html"]
    assert "Drift: off" in off["html"]
