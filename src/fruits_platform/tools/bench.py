"""``fruits bench``: throughput and memory of feature extraction, against bare engines and the notebook.

One run, same images, same weights file:
(a) bare TensorFlow and bare ONNX Runtime: one process each, no Spark, same preprocessing, batches of 64
    (``tf.function``; an InferenceSession with its default threads);
(b) the project's features step, and the whole ``fruits run-local`` (ingest + features + PCA);
(c) the notebook approach (``notebook_reference.py``).
It prints img/s, the ratios (b)/(a) and (b)/(c), and the peak RSS of the Spark Python workers.
(a) lives in ``bench_bare``; the synthetic PCA and reuse-lookup timings in ``bench_spark``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.local.runner import spark_submit_binary
from fruits_platform.local.spark_settings import LOCAL_MASTER, LOCAL_SPARK_CONF, spark_env
from fruits_platform.pipeline import WEIGHTS_HELP, default_weights
from fruits_platform.tools import phone_photos, quality
from fruits_platform.tools.bench_bare import BARE_ENGINES, run_bare
from fruits_platform.tools.bench_pipeline import (
    BENCH_DAY,
    WorkerMemory,
    labelled_runs,
    run_pipeline,
)
from fruits_platform.tools.bench_spark import history, pca_fit_time
from fruits_spark.contract import ENGINES, INPUT_SIZES, PARAMS
from fruits_spark.images import is_input_image
from fruits_spark.layout import Layout
from fruits_spark.model import WeightsUnavailable, read_weights

SHARED_IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "fruits-360-sample"


def default_source() -> Path:
    return SHARED_IMAGES if SHARED_IMAGES.is_dir() else PROJECT_ROOT / "data" / "sample"


def _images_below(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and is_input_image(p.relative_to(folder).as_posix())
    )


def prepare_images(source: Path, count: int, destination: Path) -> list[Path]:
    """``count`` distinct image files: the source's, then copies made unique by bytes after the JPEG end."""
    originals = _images_below(source)
    if not originals:
        raise SystemExit(f"bench: no images under {source}")
    marker = destination / ".prepared.json"
    wanted = {"source": str(source), "count": count}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return _images_below(destination)
    shutil.rmtree(destination, ignore_errors=True)
    prepared = []
    for i in range(count):
        original = originals[i % len(originals)]
        copy_number = i // len(originals)
        target = destination / original.parent.name / f"{copy_number:03d}_{original.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        data = original.read_bytes()
        # decoders stop at the end-of-image marker: trailing bytes change the hash, not the pixels
        target.write_bytes(data + f"copy-{copy_number}".encode() if copy_number else data)
        prepared.append(target)
    marker.write_text(json.dumps(wanted))
    return prepared


def run_notebook(input_dir: Path, weights: str, work: Path) -> dict:
    command = [spark_submit_binary(), "--master", LOCAL_MASTER]
    # the notebook's session as it was compared since round 1: every core, a 4 GiB driver
    for key, value in sorted({**LOCAL_SPARK_CONF, "spark.driver.memory": "4g"}.items()):
        command += ["--conf", f"{key}={value}"]
    command += [str(Path(__file__).with_name("notebook_reference.py")), "--input", str(input_dir)]
    command += ["--output", str(work / "notebook"), "--weights", weights]
    env = spark_env()
    started = time.monotonic()
    with WorkerMemory() as memory, (work / "notebook.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    return {"seconds": round(time.monotonic() - started, 2), "peak_worker_rss_mb": round(memory.peak_mb)}


def embedding_quality(outputs: dict[int, str]) -> dict[int, dict]:
    """Per input size: accuracy of the PCA output, and agreement of the features with the 224 ones."""

    def dataset(output: str, name: str) -> str:
        return Layout(output, BENCH_DAY).dataset(name)

    reference = (
        quality.read_vectors(dataset(outputs[224], "features"), "features") if 224 in outputs else None
    )
    figures = {}
    for size, output in outputs.items():
        paths, labels, reduced = quality.read_vectors(dataset(output, "pca"), "pca")
        figures[size] = {
            "nearest_centroid_accuracy": round(quality.nearest_centroid_accuracy(paths, labels, reduced), 4),
            "one_shot_accuracy": round(quality.one_shot_accuracy(labels, reduced), 4),
        }
        if reference:
            feature_paths, _, features = quality.read_vectors(dataset(output, "features"), "features")
            figures[size]["cosine_to_224"] = round(
                quality.mean_cosine(feature_paths, features, reference[0], reference[2]), 4
            )
    return figures


def bench_weights(weights: str, work: Path) -> str:
    """A weights file every variant loads: ``imagenet`` is downloaded once (by Keras) and saved under
    ``work``; WeightsUnavailable, with the download's own error, where it cannot be."""
    if weights != "imagenet":
        return str(Path(weights).resolve()) if Path(weights).exists() else weights
    saved = work / "imagenet.weights.h5"
    if not saved.exists():
        print("bench: downloading the ImageNet weights once (Keras), for every variant")
        saved.write_bytes(read_weights("imagenet", 224).data)
    return str(saved)


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 1) if seconds else 0.0


def _with_rates(pipeline: dict) -> dict:
    pipeline["features_img_per_s"] = _rate(pipeline["ok"], pipeline["features_seconds_in_job"])
    pipeline["features_wall_img_per_s"] = _rate(pipeline["ok"], pipeline["step_seconds"]["features"])
    pipeline["whole_img_per_s"] = _rate(pipeline["ok"], pipeline["whole_seconds"])
    return pipeline


def _print_pipeline(label: str, pipeline: dict) -> None:
    steps = ", ".join(f"{name} {seconds} s" for name, seconds in pipeline["step_seconds"].items())
    print(
        f"(b) {label}: features {pipeline['features_img_per_s']} img/s "
        f"(step's main() {pipeline['features_wall_img_per_s']}), whole run-local "
        f"{pipeline['whole_img_per_s']} img/s in {pipeline['whole_seconds']} s ({steps}), "
        f"peak Python worker RSS {pipeline['peak_worker_rss_mb']} MB, whole process tree "
        f"{pipeline['peak_tree_rss_mb']} MB (JVM {pipeline['peak_jvm_rss_mb']} MB)"
    )


def measure_pipelines(args: argparse.Namespace, input_dir: Path, weights: str, work: Path) -> dict:
    """(b) at ``--input-size`` (and every input size with ``--sizes``, with its embedding quality), each on a
    spark-submit of its own (cold, as every EMR step runs)."""
    figures = {}
    sizes = INPUT_SIZES if args.sizes else (args.input_size,)
    for size in sizes:
        pipeline = _with_rates(run_pipeline(input_dir, weights, size, work, args.engine))
        figures[f"pipeline_{size}"] = pipeline
        _print_pipeline(f"pipeline ({args.engine}), input {size}, own spark-submit", pipeline)
    if args.sizes:
        outputs = {size: figures[f"pipeline_{size}"]["output"] for size in sizes}
        for size, measured in embedding_quality(outputs).items():
            figures[f"pipeline_{size}"].update(measured)
            print(
                f"    input {size}: nearest-centroid accuracy {measured['nearest_centroid_accuracy']:.1%}, "
                f"one-shot accuracy {measured['one_shot_accuracy']:.1%}, "
                f"mean cosine to the 224 features {measured.get('cosine_to_224', float('nan')):.3f}"
            )
    return figures


def measure_bare(args: argparse.Namespace, paths: list[Path], weights: str, work: Path, main: dict) -> dict:
    """(a) for each engine not skipped, and its ratios to (b)'s figures ``main``."""
    figures = {}
    for engine in (record.name for record in ENGINES if record.name in BARE_ENGINES):
        if f"bare-{engine}" in args.skip:
            continue
        bare = run_bare(paths, weights, args.input_size, work, engine)
        bare["img_per_s_process"] = _rate(bare["images"], bare["seconds_process"])
        bare["img_per_s_inference"] = _rate(bare["images"], bare["seconds_inference"])
        figures[f"bare_{engine}"] = bare
        print(
            f"(a) bare {engine}: {bare['img_per_s_process']} img/s whole process, "
            f"{bare['img_per_s_inference']} img/s decode+inference only"
        )
    # the features step against the bare process of its own engine
    if f"bare_{args.engine}" in figures:
        figures["ratio_features_vs_bare"] = round(
            main["features_img_per_s"] / figures[f"bare_{args.engine}"]["img_per_s_process"], 2
        )
        print(f"    ratio (b) features / (a) bare, both {args.engine}: {figures['ratio_features_vs_bare']}")
    # the whole pipeline's wall time against one bare TensorFlow process over the same images
    if "bare_tensorflow" in figures:
        tensorflow_seconds = figures["bare_tensorflow"]["seconds_process"]
        for suffix, label, run in labelled_runs(main):
            ratio = figures[f"ratio_whole_wall_vs_bare_tensorflow{suffix}"] = round(
                run["whole_seconds"] / tensorflow_seconds, 2
            )
            print(
                f"    wall time (b) whole run-local ({label}) / (a) bare TensorFlow process: "
                f"{run['whole_seconds']} s / {tensorflow_seconds} s = {ratio}"
            )
    return figures


def measure_notebook(input_dir: Path, images: int, weights: str, work: Path, main: dict) -> dict:
    """(c), and the ratio of (b)'s whole run ``main`` to it."""
    notebook = run_notebook(input_dir, weights, work)
    notebook["img_per_s"] = _rate(images, notebook["seconds"])
    print(
        f"(c) notebook approach: {notebook['img_per_s']} img/s end to end, "
        f"peak Python worker RSS {notebook['peak_worker_rss_mb']} MB"
    )
    figures = {"notebook": notebook}
    for suffix, label, run in labelled_runs(main):
        ratio = figures[f"ratio_whole_vs_notebook{suffix}"] = round(
            run["whole_img_per_s"] / notebook["img_per_s"], 2
        )
        print(f"    ratio (b) whole run-local ({label}) / (c) notebook: {ratio}")
    return figures


def bench(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        weights = bench_weights(args.weights, work)
    except WeightsUnavailable as error:
        print(f"bench: {error}")
        return 2
    if args.phone_photos:
        return phone_photos.bench_phone_photos(args, work, weights)
    input_dir = work / f"images_{args.images}"
    paths = prepare_images(Path(args.source), args.images, input_dir)
    figures: dict = {
        "images": len(paths),
        "source": str(args.source),
        "cpus": os.cpu_count(),
        "engine": args.engine,
        # other processes on the machine skew the figures: recorded so that a run can be judged
        "load_average_at_start": os.getloadavg(),
    }
    print(f"bench: {len(paths)} images from {args.source}, {os.cpu_count()} cores")
    figures.update(measure_pipelines(args, input_dir, weights, work))
    main = figures[f"pipeline_{args.input_size}"]
    if "bare" not in args.skip:
        figures.update(measure_bare(args, paths, weights, work, main))
    if "notebook" not in args.skip:
        figures.update(measure_notebook(input_dir, len(paths), weights, work, main))
    if args.pca_rows:
        figures["pca_fit"] = pca_fit_time(args.pca_rows, work)
        print(f"PCA fit on {args.pca_rows} x 1280 features, k=100: {figures['pca_fit']['seconds']} s")
    result_file = work / f"bench_{args.images}.json"
    result_file.write_text(json.dumps(figures, indent=2))
    print(f"figures: {result_file}")
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmark feature extraction (prints img/s and memory)",
        description="Times the pipeline as a user runs it (fruits run-local, on its own spark-submit) on "
        "copies of --source, against (a) a bare process of each engine over the same images and (c) the "
        "notebook approach; prints images per second, the ratios and peak memory, and writes them as JSON "
        "under --work-dir. --phone-photos does the same on 12 MP phone photos.",
    )
    parser.add_argument(
        "--images", type=int, default=600, help="number of images (replicated past the source)"
    )
    parser.add_argument("--source", default=str(default_source()), help="folder of labelled images")
    PARAMS["weights"].add_argument(parser, default=default_weights(), help=WEIGHTS_HELP)
    PARAMS["input_size"].add_argument(parser)
    PARAMS["engine"].add_argument(parser, help="the features step's engine in (b)")
    parser.add_argument("--sizes", action="store_true", help="also measure every input size and its accuracy")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["bare", *(f"bare-{engine}" for engine in BARE_ENGINES), "notebook"],
        help="leave a reference out (repeatable)",
    )
    parser.add_argument(
        "--phone-photos",
        action="store_true",
        help="12 MP JPEGs with EXIF orientation and GPS made from the source: ingest, features, whole run "
        "against a bare one-process reference",
    )
    parser.add_argument("--pca-rows", type=int, default=0, help="also time a PCA fit on this many rows")
    parser.add_argument(
        "--history-rows",
        type=int,
        default=0,
        help="only time the features step's reuse lookup over this many synthetic historical rows",
    )
    parser.add_argument("--work-dir", default=str(PROJECT_ROOT / "out" / "bench"))
    parser.set_defaults(handler=lambda args: history(args) if args.history_rows else bench(args))
