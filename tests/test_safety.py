"""A user's mistake never costs data: each one fails at once with a message naming the fix, a non-zero exit
code, and a day's outputs byte for byte as they were. One good run, then every mistake against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fruits_platform.pipeline import PipelineParams, failure_reason
from fruits_spark.local_app import STEP_MARKER
from fruits_spark.report import describe_counts
from tests.dags import load_dag
from tests.inprocess import QUALITY_OFF, QUALITY_OFF_ARGS, run_pipeline
from tests.test_run_local import run_fruits

DAY = "2026-11-20"


def snapshot(output: Path) -> dict[str, bytes]:
    """Every file of the outputs (datasets, reports, models); the runner's own folders (_logs, _staging,
    _stats, _artifacts) are scratch."""
    return {
        str(path.relative_to(output)): path.read_bytes()
        for path in sorted(output.rglob("*"))
        if path.is_file() and not path.relative_to(output).parts[0].startswith("_")
    }


# first_day and the failing runs are whole runs (marked slow), their steps in process (tests.inprocess):
# what keeps a day safe is the jobs' own (they write a day's datasets aside and publish them at the end);
# the CLI's part (its checks before any step, its "step <name> failed" line) keeps its subprocess runs here
# and in test_run_local
@pytest.fixture(scope="module")
def first_day(tmp_path_factory, sample_dir, random_weights):
    root = tmp_path_factory.mktemp("safety")
    source = root / "in"
    for label in ("apple", "mango"):
        (source / label).mkdir(parents=True)
        for image in sorted((sample_dir / label).glob("*.jpg"))[:3]:
            shutil.copy(image, source / label / image.name)
    (source / "apple" / "broken.jpg").write_bytes(b"not an image at all")
    (source / "notes.txt").write_text("not an image name")
    output = root / "out"
    args = [
        "--output",
        str(output),
        "--dt",
        DAY,
        "--weights",
        str(random_weights),
        "--k",
        "5",
        *QUALITY_OFF_ARGS,
    ]
    code, printed = run_pipeline(params(source, output, random_weights))
    assert code == 0, printed[-3000:]
    return {
        "root": root,
        "output": output,
        "args": args,
        "weights": random_weights,
        "before": snapshot(output),
    }


def params(source: Path, output: Path, weights: Path) -> PipelineParams:
    """first_day's run (its ``args``) on another input."""
    return PipelineParams(str(source), str(output), DAY, weights=str(weights), k=5, **QUALITY_OFF)


def test_reused_rows_are_said_to_come_from_earlier_days_only_when_they_do():
    summary = {
        "dt": DAY,
        "counts": {
            "ok": 40,
            "featurised": 34,
            "reused": 6,
            "rejected": 1,
            "duplicates": 0,
            "ignored": 2,
            "files_seen": 43,
        },
        "reused_from": {DAY: 6},
    }
    rerun = describe_counts(summary)
    assert rerun.startswith("40 images ok: 34 featurised now, 6 reused (6 from this day's previous run);")
    assert "earlier days" not in rerun
    mixed = describe_counts({**summary, "reused_from": {"2026-11-18": 4, DAY: 2}})
    assert "(4 from earlier days (2026-11-18), 2 from this day's previous run)" in mixed


def last_line(completed) -> str:
    return completed.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_first_small_day_is_provisional_and_reported_in_the_same_words(first_day):
    output = first_day["output"]
    report = json.loads((output / "report.json").read_text())
    # 6 images cannot make the model every later day is projected with
    assert (report["pca_model"], report["pca_model_version"], report["pca_fit_rows"]) == (
        "provisional",
        None,
        6,
    )
    assert not (output / "pca_model").exists()
    assert len(report["explained_variance_on_day"]) == 5
    assert "earlier days" not in describe_counts(report)
    html = (output / "report.html").read_text()
    assert "kept for no other day" in html
    assert "on this day&#x27;s data" in html or "on this day's data" in html
    assert "<p>local run: no cluster cost</p>" in html
    assert "<th>engine</th><td>onnx</td>" in html
    assert report["embedding"]
    assert report["embedding"] in html
    assert "Rejected (1)" in html
    assert "broken.jpg" in html
    assert "Ignored (1)" in html
    assert "notes.txt" in html


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mistake", "message", "code"),
    [
        ("missing_input", "--input {root}/nope does not exist: pass --input a folder of images", 1),
        ("empty_input", "--input {root}/empty holds no files: pass --input a folder of images", 1),
        ("missing_weights", "--weights {root}/missing.weights.h5 not found: pass --weights imagenet", 1),
        ("month_13", "dt must be a real date written YYYY-MM-DD", 2),
        ("day_first", "dt must be a real date written YYYY-MM-DD (for example", 2),
    ],
)
def test_a_mistake_fails_before_any_output_changes(first_day, mistake, message, code):
    root, args = first_day["root"], list(first_day["args"])
    source = str(root / "in")
    if mistake == "missing_input":
        source = str(root / "nope")
    elif mistake == "empty_input":
        (root / "empty").mkdir(exist_ok=True)
        source = str(root / "empty")
    elif mistake == "missing_weights":
        args[args.index("--weights") + 1] = str(root / "missing.weights.h5")
    else:
        args[args.index("--dt") + 1] = {"month_13": "2026-13-45", "day_first": "29/11/2026"}[mistake]

    completed = run_fruits("--input", source, *args)

    assert completed.returncode == code
    assert message.format(root=root) in last_line(completed)
    assert "Traceback" not in completed.stderr
    assert snapshot(first_day["output"]) == first_day["before"]


@pytest.mark.slow
def test_an_output_that_is_a_file_gets_one_line(first_day, random_weights):
    target = first_day["root"] / "a_file"
    target.write_text("keep me")
    completed = run_fruits("--input", str(first_day["root"] / "in"), "--output", str(target), "--dt", DAY)
    assert completed.returncode == 1
    assert (
        completed.stderr.strip() == f"fruits: --output {target} is a file, not a folder: pass --output a "
        "folder you can write to (created if missing)"
    )
    assert target.read_text() == "keep me"


@pytest.mark.slow
def test_a_day_without_one_usable_image_replaces_nothing(first_day):
    unusable = first_day["root"] / "unusable"
    (unusable / "apple").mkdir(parents=True)
    (unusable / "apple" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (unusable / "readme.txt").write_text("hello")

    code, printed = run_pipeline(params(unusable, first_day["output"], first_day["weights"]))

    assert code != 0
    assert f"{STEP_MARKER} ingest failed" in printed
    reason = failure_reason("ingest", printed)
    assert "no usable image under --input" in reason
    assert "the day's outputs were left as they were" in reason
    assert snapshot(first_day["output"]) == first_day["before"]


@pytest.mark.slow
def test_a_run_that_fails_in_pca_leaves_the_whole_day_as_it_was(first_day, sample_dir):
    """ingest and features succeed on 40 new images, then pca cannot save its model: the day keeps its 6
    images, their features, projections, rejections and report, none of the new run's."""
    blocker = first_day["output"] / "pca_model"
    blocker.write_text("a file where the models go: saving the first kept model fails")
    try:
        code, printed = run_pipeline(params(sample_dir, first_day["output"], first_day["weights"]))
        after = snapshot(first_day["output"])
    finally:
        blocker.unlink()
    assert code != 0
    assert f"{STEP_MARKER} pca failed" in printed
    # the features step did run on the new images: the failure came after it
    assert "features: 40 embedded" in printed
    del after["pca_model"]
    assert after == first_day["before"]


def test_the_local_dag_checks_the_paths_before_any_task_writes(airflow_db, tmp_path, capfd):

    dag = load_dag("fruits_features_local")
    missing, output = tmp_path / "nope", tmp_path / "out"

    dagrun = dag.test(run_conf={"input": str(missing), "output": str(output), "dt": DAY})

    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert states["resolve_params"] == "failed"
    assert states["spark_steps"] == "upstream_failed"
    captured = capfd.readouterr()
    assert f"--input {missing} does not exist: pass --input a folder of images" in captured.out + captured.err
    assert not output.exists()
