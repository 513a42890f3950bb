"""Phone photos as the app's users take them, and a bare one-process reference for them.

The photos: each sample image upscaled to 12 MP, with sensor-like noise so that it compresses like a photo
(2-5 MB at JPEG quality 92), EXIF orientation (every other one portrait, stored landscape as phones do), GPS
and a device model. The reference does the essential work of ingest + features in one process, one core
decoding: hash the bytes, decode with JPEG draft, apply the orientation, resize, run ONNX Runtime.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fruits_spark.contract import IMAGE_EXTENSIONS

PHONE_SIZE = (4032, 3024)
# upright, rotated 90° (6, 8) and upside down (3): what a phone writes, half of it portrait
ORIENTATIONS = (1, 6, 3, 8)
# the stored frame is the upright picture turned the other way: a viewer's transpose undoes it
_STORED_TURN = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
DEVICE_MODEL = "FruitPhone 12"


def phone_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "Fruits"  # Make
    exif[0x0110] = DEVICE_MODEL  # Model
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPS: a street in Paris
    return exif


_NOISE_MARGIN = 64


@functools.lru_cache(maxsize=2)
def _noise_field(height: int, width: int, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(20261129)
    shape = (height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3)
    return np.round(rng.normal(0.0, sigma, shape)).astype(np.int16)


def phone_photo(
    source: Image.Image, orientation: int, seed: int, size=PHONE_SIZE, quality: int = 92, noise: float = 6.0
) -> bytes:
    """``source`` upscaled to ``size`` (landscape: the sensor's frame), with noise, as a JPEG with EXIF."""
    upright = source.convert("RGB").resize(
        size if orientation in (1, 3) else size[::-1], Image.Resampling.BICUBIC
    )
    # a sensor's read noise, independent per pixel and channel: it is what makes a photo weigh megabytes.
    # One field per size, shifted per photo: drawing 36 M normals for every photo would dominate the set-up
    field = _noise_field(upright.height, upright.width, noise)
    dy, dx = np.random.default_rng(seed).integers(0, _NOISE_MARGIN, 2)
    shifted = field[dy : dy + upright.height, dx : dx + upright.width]
    pixels = np.clip(np.asarray(upright, dtype=np.int16) + shifted, 0, 255).astype(np.uint8)
    frame = Image.fromarray(pixels, "RGB")
    if _STORED_TURN[orientation] is not None:
        frame = frame.transpose(_STORED_TURN[orientation])
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=quality, exif=phone_exif(orientation))
    return buffer.getvalue()


def prepare_phone_photos(source: Path, count: int, destination: Path, size=PHONE_SIZE) -> list[Path]:
    """``count`` phone photos from the source's images (cycled, each copy with its own noise); kept across
    runs when the same set was asked for, since 12 MP photos take a while to make."""
    originals = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not originals:
        raise SystemExit(f"phone photos: no images under {source}")
    marker = destination / ".prepared.json"
    wanted = {"source": str(source.resolve()), "count": count, "size": list(size)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return sorted(p for p in destination.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    prepared = []
    for i in range(count):
        original = originals[i % len(originals)]
        target = destination / original.parent.name / f"{i:05d}_{original.stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(original) as image:
            target.write_bytes(phone_photo(image, ORIENTATIONS[i % len(ORIENTATIONS)], seed=i, size=size))
        prepared.append(target)
    marker.write_text(json.dumps(wanted))
    return prepared


def draft_pixels(data: bytes, input_size: int) -> np.ndarray:
    """The reference's decode: JPEG draft to no less than twice the input size, orientation, one resize."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (2 * input_size, 2 * input_size))
    image = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(image.resize((input_size, input_size), Image.Resampling.BILINEAR), dtype=np.float32)


def bare_phone_reference(paths: list[str], onnx_file: str, input_size: int, batch_size: int = 8) -> dict:
    """One process: hash, draft decode, orientation, resize, ONNX Runtime (its default threads)."""
    started = time.monotonic()
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ready = time.monotonic()
    digests = set()
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            digest, pixels = _prepared((path, input_size))
            digests.add(digest)
            batch.append(_scaled(pixels))
        session.run(None, {name: np.stack(batch)})
    return _figures(paths, digests, started, ready)


def _prepared(job: tuple[str, int]) -> tuple[str, np.ndarray]:
    """One photo as a reference prepares it: read, hash, draft decode, orientation, resize."""
    path, input_size = job
    data = Path(path).read_bytes()
    # whole values already: uint8 loses nothing, and a pool process sends a quarter of the bytes back
    pixels = draft_pixels(data, input_size).astype(np.uint8)
    return hashlib.sha256(data).hexdigest(), pixels


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """MobileNetV2's input scale, -1..1."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _figures(paths: list[str], digests: set, started: float, ready: float) -> dict:
    finished = time.monotonic()
    return {
        "images": len(paths),
        "distinct": len(digests),
        "seconds_total": round(finished - started, 2),
        "seconds_decode_inference": round(finished - ready, 2),
    }


def every_core_reference(paths: list[str], onnx_file: str, input_size: int, batch_size: int = 8) -> dict:
    """A pool of one process per core that hashes, draft-decodes, orients and resizes, feeding ONNX Runtime
    (its default threads: every core) in this process: the machine's pace, every core decoding."""
    import multiprocessing

    started = time.monotonic()
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    digests = set()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        ready = time.monotonic()
        batch: list[np.ndarray] = []
        for digest, pixels in pool.imap(_prepared, [(path, input_size) for path in paths], chunksize=4):
            digests.add(digest)
            batch.append(_scaled(pixels))
            if len(batch) == batch_size:
                session.run(None, {name: np.stack(batch)})
                batch = []
        if batch:
            session.run(None, {name: np.stack(batch)})
    return _figures(paths, digests, started, ready)


REFERENCES = {"one-decoder": bare_phone_reference, "every-core": every_core_reference}


def run_bare_reference(
    paths: list[Path], onnx_file: str, input_size: int, work: Path, kind: str = "one-decoder"
) -> dict:
    """A bare reference (``REFERENCES``) in its own process, so that its memory and threads are its own."""
    listing = work / "phone_bare_paths.json"
    listing.write_text(json.dumps([str(p) for p in paths]))
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "fruits_platform.tools.phone_photos",
        str(listing),
        onnx_file,
        str(input_size),
        kind,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["seconds_process"] = round(time.monotonic() - started, 2)
    return result


def bench_phone_photos(args: argparse.Namespace, work: Path, weights: str) -> int:
    """``fruits bench --phone-photos``: ingest, features and the whole run on phone photos against the bare
    reference, with the Spark Python workers' peak RSS."""
    from fruits_platform.tools import bench_bare, bench_pipeline

    input_dir = work / f"phone_{args.images}"
    started = time.monotonic()
    paths = prepare_phone_photos(Path(args.source), args.images, input_dir)
    total_bytes = sum(p.stat().st_size for p in paths)
    mean_mb = total_bytes / len(paths) / 2**20
    print(
        f"bench: {len(paths)} phone photos {PHONE_SIZE[0]}x{PHONE_SIZE[1]}, {mean_mb:.2f} MB each on average "
        f"(ready in {time.monotonic() - started:.0f} s), {os.cpu_count()} cores"
    )
    figures: dict = {
        "images": len(paths),
        "photo_size": list(PHONE_SIZE),
        "mean_bytes": round(total_bytes / len(paths)),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    own = bench_pipeline.run_pipeline(input_dir, weights, args.input_size, work, args.engine)
    runs = bench_pipeline.labelled_runs(own)
    for suffix, label, pipeline in runs:
        in_job = pipeline["step_seconds_in_job"]
        pipeline["ingest_img_per_s"] = round(pipeline["ok"] / in_job["ingest"], 2)
        pipeline["features_img_per_s"] = round(pipeline["ok"] / in_job["features"], 2)
        figures[f"pipeline{suffix}"] = pipeline
        print(
            f"(b) pipeline ({label}): ingest {in_job['ingest']} s ({pipeline['ingest_img_per_s']} photos/s), "
            f"features {in_job['features']} s in their jobs; whole run-local {pipeline['whole_seconds']} s; "
            f"peak Python worker RSS {pipeline['peak_worker_rss_mb']} MB, whole process tree "
            f"{pipeline['peak_tree_rss_mb']} MB (JVM {pipeline['peak_jvm_rss_mb']} MB)"
        )
    if "bare" not in args.skip:
        model_file = bench_bare.exported_model(weights, args.input_size)
        for kind, what in (
            ("one-decoder", "one process: hash, draft decode, orientation, resize in one thread"),
            ("every-core", "a pool of one decoding process per core"),
        ):
            bare = run_bare_reference(paths, model_file, args.input_size, work, kind)
            figures[f"bare_reference_{kind}"] = bare
            print(
                f"(a) bare reference, {what}; ONNX Runtime on every core: "
                f"{bare['seconds_decode_inference']} s decode+inference, {bare['seconds_process']} s process"
            )
            for suffix, label, pipeline in runs:
                in_job = pipeline["step_seconds_in_job"]
                # the pipeline's pace as a share of the reference's: 1.0 is the reference's pace
                pace = figures[f"pace_ingest_features_vs_{kind}{suffix}"] = round(
                    bare["seconds_decode_inference"] / (in_job["ingest"] + in_job["features"]), 2
                )
                print(f"    pace of (b) ingest + features ({label}) against this reference: {pace}")
    result_file = work / f"bench_phone_{args.images}.json"
    result_file.write_text(json.dumps(figures, indent=2))
    print(f"figures: {result_file}")
    return 0


if __name__ == "__main__":
    listing_file, model_file, size, kind = sys.argv[1:5]
    reference = REFERENCES[kind]
    print(json.dumps(reference(json.loads(Path(listing_file).read_text()), model_file, int(size))))
