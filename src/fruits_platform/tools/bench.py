"""``fruits bench``: throughput and memory of feature extraction, against bare engines and the notebook.

One run, same images, same weights file:
(a) bare TensorFlow and bare ONNX Runtime: one process each, no Spark, same preprocessing, batches of 64
    (``tf.function``; an InferenceSession with its default threads);
(b) the project's features step, and the whole ``fruits run-local`` (ingest + features + PCA);
(c) the notebook approach (``notebook_reference.py``).
It prints img/s, the ratios (b)/(a) and (b)/(c), and the peak RSS of the Spark Python workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.local.runner import LOCAL_SPARK_CONF, run_local, spark_env, spark_submit_binary
from fruits_platform.pipeline import PipelineParams
from fruits_platform.tools import quality
from fruits_spark.contract import (
    ENGINES,
    IMAGE_EXTENSIONS,
    INPUT_SIZES,
    PARAMS,
    STEP_NAMES,
    WEIGHTS_ENV,
    engine_record,
)
from fruits_spark.layout import Layout

# the date partition every bench run writes (its outputs are thrown away)
BENCH_DAY = "2026-01-01"
SHARED_IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "fruits-360-sample"


def default_source() -> Path:
    return SHARED_IMAGES if SHARED_IMAGES.is_dir() else PROJECT_ROOT / "data" / "sample"


def prepare_images(source: Path, count: int, destination: Path) -> list[Path]:
    """``count`` distinct image files: the source's, then copies made unique by bytes after the JPEG end."""
    originals = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not originals:
        raise SystemExit(f"bench: no images under {source}")
    marker = destination / ".prepared.json"
    wanted = {"source": str(source), "count": count}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return sorted(p for p in destination.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
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


class WorkerMemory:
    """Samples the RSS of Spark's Python workers (pyspark.daemon and its forks) while a step runs."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_mb, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        this = psutil.Process()
        while not self._stop.is_set():
            # only this run's workers (its descendants): other test suites on the machine run Spark too
            for process in this.children(recursive=True):
                try:
                    cmdline = " ".join(process.cmdline())
                    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
                        self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                except psutil.Error:
                    pass  # ended between the listing and the reading
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _decoded_batches(paths: list[str], input_size: int, batch_size: int):
    """The same decode and preprocessing for every bare engine: PIL, bilinear resize, [-1, 1]."""
    import numpy as np
    from PIL import Image

    from fruits_spark import images

    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            image = (
                Image.open(path).convert("RGB").resize((input_size, input_size), Image.Resampling.BILINEAR)
            )
            batch.append(images.preprocess(np.asarray(image, dtype=np.float32)))
        yield np.stack(batch)


def _timed(paths: list[str], started: float, ready: float) -> dict:
    finished = time.monotonic()
    return {
        "images": len(paths),
        "seconds_total": round(finished - started, 2),
        "seconds_inference": round(finished - ready, 2),
    }


def bare_tensorflow(paths: list[str], weights: str, input_size: int, batch_size: int = 64) -> dict:
    """(a): runs inside its own process so that its memory and threads are its own."""
    started = time.monotonic()
    import tensorflow as tf

    from fruits_spark.model import build_backbone

    model = build_backbone(input_size)
    model.load_weights(weights)
    infer = tf.function(
        lambda batch: model(batch, training=False),
        input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)],
    )
    ready = time.monotonic()
    for batch in _decoded_batches(paths, input_size, batch_size):
        infer(tf.constant(batch)).numpy()
    return _timed(paths, started, ready)


def bare_onnx(paths: list[str], onnx_file: str, input_size: int, batch_size: int = 64) -> dict:
    """(a) with ONNX Runtime: the exported model in one InferenceSession with its default threads (every
    core), in its own process; no TensorFlow is imported."""
    started = time.monotonic()
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ready = time.monotonic()
    for batch in _decoded_batches(paths, input_size, batch_size):
        session.run(None, {name: batch})
    return _timed(paths, started, ready)


# the (a) baselines, outside Spark, of the engines that have one (contract.ENGINES lists the engines)
BARE_ENGINES = {"tensorflow": bare_tensorflow, "onnx": bare_onnx}


def exported_model(weights: str, input_size: int) -> str:
    """The .onnx file of these weights, from the features step's cache (exported here on a miss)."""
    from fruits_spark import model
    from fruits_spark.engines import onnx as onnx_engine

    exported = onnx_engine.cached_onnx(model.read_weights(weights, input_size), input_size)
    return str(onnx_engine.cache_dir() / f"{exported.embedding}.onnx")


def run_bare(
    paths: list[Path], weights: str, input_size: int, work: Path, engine: str = "tensorflow"
) -> dict:
    listing = work / "bare_paths.json"
    listing.write_text(json.dumps([str(p) for p in paths]))
    model_file = exported_model(weights, input_size) if engine_record(engine).staged_onnx else weights
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fruits_platform.tools.bench",
            "--bare-worker",
            str(listing),
            model_file,
            str(input_size),
            engine,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["seconds_process"] = round(time.monotonic() - started, 2)
    return result


def run_notebook(input_dir: Path, weights: str, work: Path) -> dict:
    command = [spark_submit_binary(), "--master", "local[*]"]
    for key, value in sorted(LOCAL_SPARK_CONF.items()):
        command += ["--conf", f"{key}={value}"]
    command += [str(Path(__file__).with_name("notebook_reference.py")), "--input", str(input_dir)]
    command += ["--output", str(work / "notebook"), "--weights", weights]
    env = spark_env()
    started = time.monotonic()
    with WorkerMemory() as memory, (work / "notebook.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    return {"seconds": round(time.monotonic() - started, 2), "peak_worker_rss_mb": round(memory.peak_mb)}


def run_pipeline(input_dir: Path, weights: str, input_size: int, work: Path, engine: str = "onnx") -> dict:
    output = work / f"pipeline_{input_size}"
    shutil.rmtree(output, ignore_errors=True)
    params = PipelineParams(
        str(input_dir), str(output), BENCH_DAY, weights, input_size=input_size, engine=engine
    )
    with WorkerMemory() as memory:
        report, wall = run_local(params, echo=lambda _: None)
    return {
        "ok": report["counts"]["ok"],
        "features_seconds_in_job": report["step_seconds"]["features"],
        "step_seconds": {name: wall[name] for name in STEP_NAMES},
        "whole_seconds": wall["spark_submit"],
        "peak_worker_rss_mb": round(memory.peak_mb),
        "model_builds": report["model_builds"],
        "output": str(output),
    }


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


def _rate(images: int, seconds: float) -> float:
    return round(images / seconds, 1) if seconds else 0.0


def bench(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    weights = str(Path(args.weights).resolve()) if Path(args.weights).exists() else args.weights
    if weights == "imagenet":
        print(
            "bench: needs a weights file (--weights or FRUITS_WEIGHTS): every variant must use the same one"
        )
        return 2
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

    sizes = INPUT_SIZES if args.sizes else (args.input_size,)
    for size in sizes:
        pipeline = run_pipeline(input_dir, weights, size, work, args.engine)
        pipeline["features_img_per_s"] = _rate(pipeline["ok"], pipeline["features_seconds_in_job"])
        pipeline["features_wall_img_per_s"] = _rate(pipeline["ok"], pipeline["step_seconds"]["features"])
        pipeline["whole_img_per_s"] = _rate(pipeline["ok"], pipeline["whole_seconds"])
        figures[f"pipeline_{size}"] = pipeline
        steps = ", ".join(f"{name} {seconds} s" for name, seconds in pipeline["step_seconds"].items())
        print(
            f"(b) pipeline ({args.engine}), input {size}: features {pipeline['features_img_per_s']} img/s "
            f"(step's main() {pipeline['features_wall_img_per_s']}), whole run-local "
            f"{pipeline['whole_img_per_s']} img/s in {pipeline['whole_seconds']} s ({steps}), "
            f"peak Python worker RSS {pipeline['peak_worker_rss_mb']} MB"
        )
    if args.sizes:
        outputs = {size: figures[f"pipeline_{size}"]["output"] for size in sizes}
        for size, measured in embedding_quality(outputs).items():
            figures[f"pipeline_{size}"].update(measured)
            print(
                f"    input {size}: nearest-centroid accuracy {measured['nearest_centroid_accuracy']:.1%}, "
                f"one-shot accuracy {measured['one_shot_accuracy']:.1%}, "
                f"mean cosine to the 224 features {measured.get('cosine_to_224', float('nan')):.3f}"
            )
    main_pipeline = figures[f"pipeline_{args.input_size}"]

    if "bare" not in args.skip:
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
                main_pipeline["features_img_per_s"] / figures[f"bare_{args.engine}"]["img_per_s_process"], 2
            )
            print(
                f"    ratio (b) features / (a) bare, both {args.engine}: {figures['ratio_features_vs_bare']}"
            )
        # the whole pipeline's wall time against one bare TensorFlow process over the same images
        if "bare_tensorflow" in figures:
            figures["ratio_whole_wall_vs_bare_tensorflow"] = round(
                main_pipeline["whole_seconds"] / figures["bare_tensorflow"]["seconds_process"], 2
            )
            print(
                f"    wall time (b) whole run-local / (a) bare TensorFlow process: "
                f"{main_pipeline['whole_seconds']} s / {figures['bare_tensorflow']['seconds_process']} s = "
                f"{figures['ratio_whole_wall_vs_bare_tensorflow']}"
            )
    if "notebook" not in args.skip:
        notebook = run_notebook(input_dir, weights, work)
        notebook["img_per_s"] = _rate(len(paths), notebook["seconds"])
        figures["notebook"] = notebook
        figures["ratio_whole_vs_notebook"] = round(
            main_pipeline["whole_img_per_s"] / notebook["img_per_s"], 2
        )
        print(
            f"(c) notebook approach: {notebook['img_per_s']} img/s end to end, "
            f"peak Python worker RSS {notebook['peak_worker_rss_mb']} MB"
        )
        print(f"    ratio (b) whole run-local / (c) notebook: {figures['ratio_whole_vs_notebook']}")
    if args.pca_rows:
        figures["pca_fit"] = pca_fit_time(args.pca_rows, work)
        print(f"PCA fit on {args.pca_rows} x 1280 features, k=100: {figures['pca_fit']['seconds']} s")
    result_file = work / f"bench_{args.images}.json"
    result_file.write_text(json.dumps(figures, indent=2))
    print(f"figures: {result_file}")
    return 0


def pca_fit_time(rows: int, work: Path) -> dict:
    """Fit time of Spark ML PCA (k=100) on ``rows`` synthetic 1280-d features (low rank + noise)."""
    import numpy as np
    import pandas as pd
    from pyspark.sql import SparkSession

    from fruits_spark.pca import PcaParams, fit

    # in-process Spark starts its Python workers with PYSPARK_PYTHON, not with this interpreter
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[*]")
        .config("spark.driver.memory", "6g")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )

    def synthesize(batches):
        for batch in batches:
            rng = np.random.default_rng(int(batch["id"].iloc[0]))
            latent = rng.normal(size=(len(batch), 32)) @ rng.normal(size=(32, 1280))
            values = (latent + rng.normal(scale=0.1, size=latent.shape)).astype(np.float32)
            yield pd.DataFrame({"path": batch["id"].astype(str), "label": "x", "features": list(values)})

    folder = work / f"synthetic_features_{rows}"
    if not (folder / "_SUCCESS").exists():
        spark.range(rows, numPartitions=16).mapInPandas(
            synthesize, "path string, label string, features array<float>"
        ).write.mode("overwrite").parquet(str(folder))
    features = spark.read.parquet(str(folder))
    started = time.monotonic()
    fit(features, PcaParams(100))
    seconds = round(time.monotonic() - started, 1)
    spark.stop()
    return {"rows": rows, "seconds": seconds}


def history_lookup_time(rows: int, work: Path, days: int = 20, today_images: int = 1000) -> dict:
    """Times the features step's reuse lookup against ``rows`` synthetic historical feature rows.

    ``rows`` rows of 1280 floats spread over ``days`` complete partitions, each with its index, and a day of
    ``today_images`` uploads, half of them seen before. Measured: the index lookup alone, the whole
    ``reuse.plan`` (lookup, fetch of the matched rows from their partitions only, staged copy), and for
    comparison a scan of the whole feature history semi-joined with the same hashes.
    """
    import hashlib

    import numpy as np
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from fruits_spark import reuse
    from fruits_spark.layout import Layout

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[*]")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    embedding = "benchweights0000-s224"
    day_names = [f"2025-01-{d + 1:02d}" for d in range(days)]
    output = work / f"history_{rows}"

    def content_hash(i: int) -> str:
        return hashlib.sha256(str(i).encode()).hexdigest()

    def synthesize(batches):
        for batch in batches:
            rng = np.random.default_rng(int(batch["id"].iloc[0]))
            values = rng.normal(size=(len(batch), 1280)).astype(np.float32)
            yield pd.DataFrame(
                {
                    "path": "s3://b/uploads/" + batch["id"].astype(str) + ".jpg",
                    "label": "x",
                    "content_hash": [content_hash(i) for i in batch["id"]],
                    "features": list(values),
                }
            )

    marker = output / "_bench_ready"
    if not marker.exists():
        per_day = rows // days
        for d, day in enumerate(day_names):
            layout = Layout(str(output), day)
            spark.range(d * per_day, (d + 1) * per_day, numPartitions=2).mapInPandas(
                synthesize, "path string, label string, content_hash string, features array<float>"
            ).withColumn("embedding", F.lit(embedding)).write.mode("overwrite").parquet(
                layout.dataset("features")
            )
            reuse.write_index(spark, layout)
        marker.write_text(json.dumps({"rows": rows, "days": days}))

    def measure(today: Layout, seen: list[str]) -> dict:
        new = [content_hash(rows + i) for i in range(today_images - len(seen))]
        spark.createDataFrame(
            [(f"s3://b/today/{h}.jpg", "x", h, bytearray(b"png")) for h in seen + new],
            "path string, label string, content_hash string, content binary",
        ).write.mode("overwrite").parquet(today.dataset("images"))
        hashes = spark.read.parquet(today.dataset("images")).select("content_hash")
        reuse.plan(spark, today, embedding)  # warm-up: JVM, file listings and OS cache alike for all three

        started = time.monotonic()
        indexed, unindexed = reuse.history_days(spark, today)
        index = reuse.read_index(spark, today, indexed, unindexed)
        matched = reuse.find_matches(index, hashes, embedding).count()
        lookup = time.monotonic() - started
        started = time.monotonic()
        plan = reuse.plan(spark, today, embedding)
        whole = time.monotonic() - started
        started = time.monotonic()
        # the naive way: every stored feature row read, then matched
        spark.read.parquet(str(output / "features")).filter(F.col("embedding") == embedding).join(
            hashes, "content_hash", "left_semi"
        ).select("content_hash", "features").write.format("noop").mode("overwrite").save()
        full_scan = time.monotonic() - started
        return {
            "matched": matched,
            "reused": plan.n_reused,
            "partitions_read_for_features": len(plan.reused_from),
            "index_lookup_seconds": round(lookup, 2),
            "plan_seconds": round(whole, 2),
            "full_scan_seconds": round(full_scan, 2),
        }

    half = today_images // 2
    per_day = rows // days
    figures = {
        # worst case for the fetch: the photos seen before are spread over every day of the history
        "spread": measure(
            Layout(str(output), "2025-12-30"), [content_hash(i) for i in range(0, rows, rows // half)][:half]
        ),
        # re-uploads of yesterday's photos: one partition holds every match
        "recent": measure(
            Layout(str(output), "2025-12-31"), [content_hash(rows - per_day + i) for i in range(half)]
        ),
    }
    spark.stop()
    return {"history_rows": rows, "days": days, "today_images": today_images, **figures}


def history(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    figures = history_lookup_time(args.history_rows, work)
    for scenario in ("spread", "recent"):
        measured = figures[scenario]
        print(
            f"reuse lookup, {scenario}: {figures['history_rows']:,} historical rows in {figures['days']} "
            f"days, {figures['today_images']} uploads ({measured['matched']} seen before, in "
            f"{measured['partitions_read_for_features']} partitions): index lookup "
            f"{measured['index_lookup_seconds']} s, "
            f"whole plan with staged copy {measured['plan_seconds']} s; "
            f"scanning the whole feature history instead {measured['full_scan_seconds']} s"
        )
    (work / f"history_{args.history_rows}.json").write_text(json.dumps(figures, indent=2))
    return 0


def register(commands) -> None:
    parser = commands.add_parser("bench", help="benchmark feature extraction (prints img/s and memory)")
    parser.add_argument(
        "--images", type=int, default=600, help="number of images (replicated past the source)"
    )
    parser.add_argument("--source", default=str(default_source()), help="folder of labelled images")
    PARAMS["weights"].add_argument(parser, default=os.environ.get(WEIGHTS_ENV, PARAMS["weights"].default))
    PARAMS["input_size"].add_argument(parser)
    PARAMS["engine"].add_argument(parser, help="the features step's engine in (b)")
    parser.add_argument("--sizes", action="store_true", help="also measure every input size and its accuracy")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["bare", *(f"bare-{engine}" for engine in BARE_ENGINES), "notebook"],
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


if __name__ == "__main__" and sys.argv[1:2] == ["--bare-worker"]:
    listing, model_file, size, bare_engine = sys.argv[2:6]
    print(json.dumps(BARE_ENGINES[bare_engine](json.loads(Path(listing).read_text()), model_file, int(size))))
