"""`fruits run-local` end to end on real images mixed with broken ones: the output contract and reruns."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from fruits_platform.local.class_archive import archive_path
from fruits_platform.local.spark_settings import sized
from fruits_platform.pipeline import PipelineParams
from fruits_spark.contract import STEP_NAMES, engine_record
from fruits_spark.report import describe_counts
from tests.corpus import write_mixed_folder
from tests.inprocess import QUALITY_OFF, QUALITY_OFF_ARGS, run_pipeline

# whole `fruits run-local` runs: `make test-fast` leaves them to `make test`
pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).parent / "fruits")
DAY_ONE, DAY_TWO = "2026-11-21", "2026-11-22"


def run_fruits(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FRUITS, "run-local", "--master", "local[2]", *args],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
        timeout=1200,
        check=False,
    )


def run_day(input_dir: Path, output: Path, day: str, weights: Path) -> subprocess.CompletedProcess:
    return run_fruits(
        *("--input", str(input_dir), "--output", str(output), "--dt", day, "--weights", str(weights)),
        *("--k", "5", *QUALITY_OFF_ARGS),
    )


def read_table(folder: Path):
    return pq.read_table(folder).to_pylist()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, sample_dir, random_weights):
    real = [
        p
        for label in ("apple", "lemon", "mango", "raspberry")
        for p in sorted((sample_dir / label).glob("*.jpg"))[:3]
    ]
    root = tmp_path_factory.mktemp("mixed")
    expected = write_mixed_folder(root / "in", real)
    output = root / "out"
    completed = run_day(root / "in", output, DAY_ONE, random_weights)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    return expected, root, output, completed


def test_every_input_is_featurised_rejected_or_ignored(mixed_run):
    expected, root, output, _ = mixed_run
    prefix = "file:" + str(root / "in") + "/"
    features = {r["path"].removeprefix(prefix): r for r in read_table(output / "features" / f"dt={DAY_ONE}")}
    rejected = {r["path"].removeprefix(prefix): r for r in read_table(output / "rejected" / f"dt={DAY_ONE}")}
    ignored = {r["path"].removeprefix(prefix) for r in read_table(output / "ignored" / f"dt={DAY_ONE}")}
    for name, outcome in expected.items():
        if outcome == "ok":
            assert name in features, name
            assert len(features[name]["features"]) == 1280
        elif outcome == "ignored":
            assert name in ignored, name
        else:
            assert rejected[name]["reason"] == outcome, name
    assert len(features) + len(rejected) + len(ignored) == len(expected)


def test_report_reconciles_with_the_outputs(mixed_run):
    expected, _, output, completed = mixed_run
    report = json.loads((output / "report.json").read_text())
    counts = report["counts"]
    outcomes = list(expected.values())
    # what every file became; the other steps' counts (their records') come beside these
    core = ("files_seen", "ok", "featurised", "reused", "rejected", "duplicates", "ignored")
    assert {key: counts[key] for key in core} == {
        "files_seen": len(expected),
        "ok": outcomes.count("ok"),
        "featurised": outcomes.count("ok"),  # a first day: nothing to reuse
        "reused": 0,
        "rejected": len(outcomes)
        - outcomes.count("ok")
        - outcomes.count("ignored")
        - outcomes.count("duplicate"),
        "duplicates": outcomes.count("duplicate"),
        "ignored": outcomes.count("ignored"),
    }
    assert report["reconciled"] is True
    assert report["k"] == 5
    assert len(report["explained_variance"]) == 5
    assert report["cumulative_explained_variance"][-1] == pytest.approx(sum(report["explained_variance"]))
    assert list(report["step_seconds"]) == list(STEP_NAMES)
    # one truth: the terminal says what report.json says
    assert f"done: {describe_counts(report)}" in completed.stdout
    assert f"{counts['ok']} images ok: {counts['featurised']} featurised now, 0 reused;" in completed.stdout
    # the steps' own lines reach the terminal while they run (progress included), not only the log
    embedded = counts["ok"] + report["rejected_by_reason"].get("featurization_failed", 0)
    assert f"features: {embedded} images to embed" in completed.stdout
    for name in (
        "report.html",
        "report_explained_variance.png",
        "report_pca_scatter.png",
        "report_step_seconds.png",
    ):
        assert (output / name).stat().st_size > 1000, name
        assert (output / "reports" / f"dt={DAY_ONE}" / name).exists()
    html = (output / "report.html").read_text()
    assert f"<tr><th>ok</th><td>{counts['ok']}</td></tr>" in html


def test_csv_matrix_has_a_row_per_featurised_image(mixed_run):
    expected, _, output, _ = mixed_run
    # one file with a stable name, not Spark's part-*.csv
    assert [
        f.name for f in (output / "pca_csv" / f"dt={DAY_ONE}").iterdir() if not f.name.startswith(".")
    ] == ["pca.csv"]
    csv_file = output / "pca_csv" / f"dt={DAY_ONE}" / "pca.csv"
    with csv_file.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "label"] + [f"pc_{i}" for i in range(1, 6)]
    assert len(rows) - 1 == list(expected.values()).count("ok")
    assert len(read_table(output / "pca" / f"dt={DAY_ONE}")) == len(rows) - 1


def test_curated_images_carry_no_exif(mixed_run):
    _, _, output, _ = mixed_run
    curated = read_table(output / "images" / f"dt={DAY_ONE}")
    assert curated
    assert set(curated[0]) == {"path", "label", "content_hash", "width", "height", "content"}
    assert all(b"FruitPhone" not in row["content"] and b"Exif" not in row["content"] for row in curated)


def test_rerun_replaces_its_date_only_and_applies_the_current_model(
    mixed_run, sample_dir, random_weights, spark
):
    """Day one is too small for a model later days apply (provisional); day two brings the rows seen to
    enough and fits the first kept version; the rerun of day one applies it."""
    _, root, output, _ = mixed_run
    first_report = json.loads((output / "report.json").read_text())
    assert (first_report["pca_model"], first_report["pca_model_version"]) == ("provisional", None)
    day_two_input = root / "day_two"
    for label in ("apple", "lemon", "mango", "raspberry"):
        (day_two_input / label).mkdir(parents=True)
        for source in sorted((sample_dir / label).glob("*.jpg"))[3:10]:
            (day_two_input / label / source.name).write_bytes(source.read_bytes())
    # the CLI's part is mixed_run's: these runs take its arguments, their steps in process
    code, printed = run_pipeline(
        PipelineParams(
            str(day_two_input), str(output), DAY_TWO, weights=str(random_weights), k=5, **QUALITY_OFF
        )
    )
    assert code == 0, printed[-3000:]
    second_report = json.loads((output / "report.json").read_text())
    assert second_report["pca_model"] == "first_fit"
    assert second_report["pca_fit_rows"] == first_report["counts"]["ok"] + 28
    code, printed = run_pipeline(
        PipelineParams(
            str(root / "in"), str(output), DAY_ONE, weights=str(random_weights), k=5, **QUALITY_OFF
        )
    )
    assert code == 0, printed[-3000:]

    by_day = {day: len(read_table(output / "features" / f"dt={day}")) for day in (DAY_ONE, DAY_TWO)}
    assert by_day == {DAY_ONE: first_report["counts"]["ok"], DAY_TWO: 28}
    assert len(read_table(output / "features")) == sum(by_day.values())  # no duplicate rows after the rerun
    rerun_report = json.loads((output / "report.json").read_text())
    assert rerun_report["pca_model"] == "applied"
    assert rerun_report["pca_model_version"] == second_report["pca_model_version"]


def test_without_imagenet_access_the_error_names_the_way_out(mixed_run, tmp_path, sample_dir):
    env = dict(
        os.environ,
        KERAS_HOME=str(tmp_path / "keras"),
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
    )
    env.pop("FRUITS_WEIGHTS", None)
    completed = run_fruits(
        "--input",
        str(sample_dir / "apple"),
        "--output",
        str(tmp_path / "out"),
        "--weights",
        "imagenet",
        env=env,
    )
    assert completed.returncode == 1
    message = completed.stderr.strip().splitlines()[-1]
    # said before any step ran, in words (no Python class leads the line), with the way out
    assert message.startswith("fruits: --weights imagenet: cannot download the ImageNet weights (")
    # the download's own message, not only its class: a proxy refusal must read differently from no network
    assert re.search(r"cannot download the ImageNet weights \(\w+: .*(fetch|refused|proxy|Proxy)", message)
    assert "--weights" in message
    assert "FRUITS_WEIGHTS" in message
    assert not (tmp_path / "out").exists()


def copied(source: Path, names: list[str], folder: Path) -> Path:
    for name in names:
        (folder / Path(name).parent).mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


def test_two_runs_of_one_day_at_once_never_mix(mixed_run, sample_dir, random_weights, tmp_path):
    """The second run of a day that another run is writing fails at once, naming it; the day is the first
    run's alone. (After mixed_run: this CLI run maps the class archive the first one of the session wrote.)"""
    first_in = copied(
        sample_dir,
        [f"apple/{p.name}" for p in sorted((sample_dir / "apple").glob("*.jpg"))[:4]],
        tmp_path / "a",
    )
    second_in = copied(
        sample_dir,
        [f"lemon/{p.name}" for p in sorted((sample_dir / "lemon").glob("*.jpg"))[:2]],
        tmp_path / "b",
    )
    output = tmp_path / "out"
    args = ["--output", str(output), "--dt", DAY_ONE, "--weights", str(random_weights), "--k", "2"]
    args += QUALITY_OFF_ARGS  # not what this is about
    # the first on the default path (no --master: sized to this machine), the second as the others
    first = subprocess.Popen(
        [FRUITS, "run-local", "--input", str(first_in), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lease_file = output / "_leases" / f"dt={DAY_ONE}.json"
    deadline = time.monotonic() + 300
    while not lease_file.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lease_file.exists(), first.communicate()
    second = run_fruits("--input", str(second_in), *args)
    _, first_err = first.communicate(timeout=1200)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 1
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith(f"fruits: dt={DAY_ONE} of {output} is being written by fruits run-local ")
    assert f"pid {first.pid})" in message
    # the day holds the first run's photos, and its report agrees with them
    paths = {row["path"] for row in read_table(output / "features" / f"dt={DAY_ONE}")}
    assert len(paths) == 4
    assert all("/a/apple/" in path for path in paths)
    assert json.loads((output / "report.json").read_text())["counts"]["ok"] == 4
    # its JVM started from the class archive an earlier run of this machine wrote (class_archive)
    (log,) = (output / "_logs").rglob("pipeline.log")
    command = log.read_text().splitlines()[0]
    assert f"-XX:SharedArchiveFile={archive_path()}" in command
    assert archive_path().stat().st_size > 10_000_000
    # sized to this machine, and nothing of the run is left running
    sizing = sized(worker_peak_mb=engine_record("onnx").worker_peak_mb)
    assert f"--master {sizing.master} " in command
    assert f"spark.driver.memory={sizing.driver_mb}m" in command
    leftovers = [
        process.info["pid"]
        for process in psutil.process_iter(["pid", "cmdline"])
        if str(output) in " ".join(process.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_the_runner_takes_the_resolved_params_the_local_dag_passes(tmp_path):
    """The local DAG validates its params once and passes ``as_dict()`` between tasks: the runner finds the
    run's log and report from it."""
    from fruits_platform.local import runner
    from fruits_spark.layout import Layout

    params = PipelineParams(str(tmp_path / "in"), str(tmp_path / "out"), "2026-11-05", k=7, recompute=True)
    resolved = params.as_dict()
    assert (
        runner.log_path(resolved, "pipeline") == tmp_path / "out" / "_logs" / "dt=2026-11-05" / "pipeline.log"
    )
    report = Path(Layout(params.output, params.dt).report())
    report.parent.mkdir(parents=True)
    report.write_text('{"k": 7}')
    assert runner.read_report(resolved) == {"k": 7}
