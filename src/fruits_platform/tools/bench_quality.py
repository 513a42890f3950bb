"""``python -m fruits_platform.tools.bench_quality``: how the quality step's thresholds were chosen.

Near-duplicates: copies made here of real photos (re-encoded as JPEG at quality 30, downscaled to 60 %,
cropped by 8 % on each side), embedded as the pipeline embeds them (ingest's curated copy, the features
step's preprocessing, ONNX Runtime with the given weights). Recall is the share of (original, copy) pairs
the step flags; false flags are the pairs of two different originals it flags.

Suspicious labels: a share of the originals is moved to a wrong label folder. Recall is the share of moved
photos the step flags; the false-flag rate is the share of untouched photos it flags.

Both run the step's own Spark transforms (``fruits_spark.quality``) on a local session, for a grid of
thresholds, and print one line per threshold. ``--cost N`` times the step on N features rows instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.pipeline import WEIGHTS_HELP, default_weights
from fruits_spark import images as image_rules

SHARED_IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "fruits-360-sample"
# (name, JPEG quality, scale, crop per side): mild and harsh versions of each edit
COPY_KINDS = {
    "jpeg_q75": (75, 1.0, 0.0),
    "jpeg_q50": (50, 1.0, 0.0),
    "resized_80": (90, 0.8, 0.0),
    "resized_60": (90, 0.6, 0.0),
    "cropped_3": (90, 1.0, 0.03),
    "cropped_8": (90, 1.0, 0.08),
}
# candidate thresholds, in the params' thousandths
SIMILARITIES = (850, 880, 900, 920, 950, 970)
MARGINS = (1, 20, 50, 100, 150, 200)
# every MOVE_EVERY-th original is filed under the next label
MOVE_EVERY = 10


def make_copy(data: bytes, kind: str) -> bytes:
    """One copy of a photo as an app user makes one: saved again at a lower quality, shrunk, or cropped."""
    quality, scale, crop = COPY_KINDS[kind]
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BICUBIC)
    if crop:
        dx, dy = round(image.width * crop), round(image.height * crop)
        image = image.crop((dx, dy, image.width - dx, image.height - dy))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _turn_order(path: Path) -> tuple[bool, int]:
    # Fruits-360 names a frame of the turning fruit <n>_100.jpg (r_<n>_100.jpg for its second turn)
    parts = path.stem.split("_")
    return parts[0] == "r", int(parts[-2]) if len(parts) > 1 and parts[-2].isdigit() else 0


def originals(source: Path, per_label: int) -> list[tuple[str, str, bytes]]:
    """(path, label, bytes) of ``per_label`` photos of each label folder, spread evenly over its frames:
    the sample's photos are frames of a turning fruit, and neighbouring frames are near-duplicates."""
    found = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted((p for p in folder.iterdir() if image_rules.is_image_name(p.name)), key=_turn_order)
        step = max(1, len(files) // per_label)
        found += [(f"{folder.name}/{p.name}", folder.name, p.read_bytes()) for p in files[::step][:per_label]]
    return found


def embed(datas: list[bytes], weights: str, input_size: int = 224) -> np.ndarray:
    """The features the pipeline gives these files: ingest's curated copy, then the features step."""
    from fruits_spark import model
    from fruits_spark.engines import onnx

    exported = onnx.cached_onnx(model.read_weights(weights, input_size, weights), input_size)
    infer = onnx.onnx_infer(exported.data, threads=os.cpu_count() or 1)
    pixels = []
    for data in datas:
        curated = image_rules.inspect_image(data).content
        pixels.append(image_rules.preprocess(image_rules.decode_rgb(curated, input_size)))
    return np.concatenate([infer(np.stack(pixels[i : i + 64])) for i in range(0, len(pixels), 64)])


def calibration_set(source: Path, per_label: int, weights: str, work: Path) -> dict:
    """Originals and their copies, embedded once and kept under ``work`` (the embedding is the slow part)."""
    cache = work / f"calibration_{per_label}.npz"
    found = originals(source, per_label)
    if cache.exists():
        kept = np.load(cache, allow_pickle=False)
        if list(kept["paths"]) == [path for path, _, _ in found] and list(kept["kinds"]) == list(COPY_KINDS):
            return {key: kept[key] for key in kept.files}
    copies = [make_copy(data, kind) for _, _, data in found for kind in COPY_KINDS]
    started = time.monotonic()
    vectors = embed([data for _, _, data in found] + copies, weights)
    print(f"bench_quality: {len(vectors)} photos embedded in {time.monotonic() - started:.0f} s")
    n = len(found)
    result = {
        "paths": np.array([path for path, _, _ in found]),
        "labels": np.array([label for _, label, _ in found]),
        "kinds": np.array(list(COPY_KINDS)),
        "originals": vectors[:n],
        "copies": vectors[n:].reshape(n, len(COPY_KINDS), -1),
    }
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)
    return result


def features_frame(spark, rows: list[tuple[str, str, str, str, np.ndarray]]):
    return spark.createDataFrame(
        [(path, label, key, day, vector.astype(float).tolist()) for path, label, key, day, vector in rows],
        "path string, label string, content_hash string, dt string, features array<float>",
    )


def near_duplicate_figures(spark, data: dict) -> list[dict]:
    """Per threshold: recall of each copy kind, pairs flagged among photos that are not copies (of the
    same label: other frames of the same fruit; of different labels), and what the LSH lost against
    exact cosines. One join at the lowest threshold: the LSH's candidates do not depend on it."""
    from fruits_spark import quality

    kinds = [str(kind) for kind in data["kinds"]]
    rows, source = [], {}
    for i, (path, label) in enumerate(zip(data["paths"], data["labels"], strict=True)):
        rows.append((f"o/{path}", str(label), f"o{i}", "d", data["originals"][i]))
        source[f"o/{path}"] = (i, "original")
        for k, kind in enumerate(kinds):
            rows.append((f"{kind}/{path}", str(label), f"c{i}_{k}", "d", data["copies"][i, k]))
            source[f"{kind}/{path}"] = (i, kind)
    day = quality.unit_vectors(features_frame(spark, rows)).cache()
    started = time.monotonic()
    lowest = min(SIMILARITIES) / 1000
    flagged = quality.near_duplicates(day, None, lowest).select("path", "other_path", "similarity").collect()
    join_seconds = time.monotonic() - started
    day.unpersist()
    vectors = np.concatenate([data["originals"][:, None, :], data["copies"]], axis=1).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    exact_copy = np.einsum("nd,nkd->nk", vectors[:, 0], vectors[:, 1:])
    labels = data["labels"]
    n = len(labels)
    unit = vectors.reshape(n * (len(kinds) + 1), -1)
    owner = np.repeat(np.arange(n), len(kinds) + 1)
    cosines = unit @ unit.T
    different = owner[:, None] < owner[None, :]
    same_label = labels[owner][:, None] == labels[owner][None, :]
    figures = []
    for similarity in SIMILARITIES:
        t = similarity / 1000
        copy_pairs = dict.fromkeys(kinds, 0)
        same, other = 0, 0
        for row in flagged:
            if row["similarity"] < t:
                continue
            (a, kind_a), (b, kind_b) = source[row["path"]], source[row["other_path"]]
            if a == b and "original" in (kind_a, kind_b):
                copy_pairs[kind_a if kind_b == "original" else kind_b] += 1
            elif a != b:
                same += labels[a] == labels[b]
                other += labels[a] != labels[b]
        figures.append(
            {
                "similarity": similarity,
                "recall": {kind: round(copy_pairs[kind] / n, 3) for kind in kinds},
                "exact_recall": {
                    kind: round(float(np.mean(exact_copy[:, k] >= t)), 3) for k, kind in enumerate(kinds)
                },
                "false_pairs_same_label": int(same),
                "false_pairs_other_labels": int(other),
                "exact_false_pairs": int(np.sum(different & (cosines >= t))),
                "exact_false_pairs_other_labels": int(np.sum(different & ~same_label & (cosines >= t))),
            }
        )
    pairs_total = int(np.sum(different))
    for figure in figures:
        figure["non_copy_pairs"] = pairs_total
        figure["join_seconds"] = round(join_seconds, 1)
    return figures


def label_figures(spark, data: dict) -> list[dict]:
    """Per margin: the share of photos moved to a wrong label that are flagged, and the share of untouched
    photos flagged. One audit at the smallest margin: a larger one keeps a subset of its rows."""
    from fruits_spark import quality

    names = sorted({str(label) for label in data["labels"]})
    rows, moved = [], set()
    for i, (path, label) in enumerate(zip(data["paths"], data["labels"], strict=True)):
        given = str(label)
        if i % MOVE_EVERY == MOVE_EVERY // 2:
            given = names[(names.index(given) + 1) % len(names)]
            moved.add(f"o/{path}")
        rows.append((f"o/{path}", given, f"o{i}", "d", data["originals"][i]))
    day = quality.unit_vectors(features_frame(spark, rows)).cache()
    audit = quality.audit_frame(day, quality.label_sums(day), min(MARGINS) / 1000).collect()
    day.unpersist()
    untouched = len(rows) - len(moved)
    figures = []
    for margin in MARGINS:
        flagged = {row["path"] for row in audit if row["margin"] >= margin / 1000}
        figures.append(
            {
                "margin": margin,
                "moved": len(moved),
                "recall": round(len(flagged & moved) / len(moved), 3),
                "untouched": untouched,
                "false_flags": len(flagged - moved),
                "false_flag_rate": round(len(flagged - moved) / untouched, 4),
            }
        )
    return figures


def drift_figures(data: dict) -> dict:
    """What the drift of a label is between two halves of the same photos (sampling alone), and when
    a quarter of a label's photos are another label's."""
    labels = data["labels"]
    unit = data["originals"] / np.linalg.norm(data["originals"], axis=1, keepdims=True)
    names = sorted(set(labels))
    halves, mixed = {}, {}
    for k, name in enumerate(names):
        own = unit[labels == name]
        a, b = own[0::2].sum(axis=0), own[1::2].sum(axis=0)
        halves[str(name)] = round(float(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)), 4)
        other = unit[labels == names[(k + 1) % len(names)]]
        quarter = len(own) // 4
        shifted = np.concatenate([own[quarter:], other[:quarter]]).sum(axis=0)
        whole = own.sum(axis=0)
        mixed[str(name)] = round(
            float(1 - shifted @ whole / np.linalg.norm(shifted) / np.linalg.norm(whole)), 4
        )
    return {"halves": halves, "quarter_of_another_label": mixed}


class TreeMemory:
    """The peak RSS of this process and its children (the local JVM, its Python workers), summed, sampled
    every 0.5 s while the step runs."""

    def __init__(self) -> None:
        import threading

        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        this = psutil.Process()
        while not self._stop.is_set():
            total = this.memory_info().rss
            for process in this.children(recursive=True):
                # one may end between the listing and the reading
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(0.5)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cost(spark, data: dict, images: int, work: Path, settings: dict[str, list[str]]) -> dict:
    """The quality step's ``main()`` on ``images`` features rows staged as a day's (the calibration
    photos and their copies, repeated as ``fruits bench`` repeats its 1,962 photos: the same vectors
    under new hashes), with each of ``settings``' extra arguments: seconds in the job and peak memory."""
    from fruits_spark import quality
    from fruits_spark.layout import Layout

    vectors = np.concatenate([data["originals"][:, None, :], data["copies"]], axis=1)
    vectors = vectors.reshape(-1, vectors.shape[-1])
    labels = np.repeat(data["labels"], len(data["kinds"]) + 1)
    output = work / f"cost_{images}"
    layout = Layout(str(output), "2026-01-01", staged=True)
    if not (output / "_staging" / "features").exists():
        rows = [
            (
                f"{labels[i % len(labels)]}/{i}.jpg",
                str(labels[i % len(labels)]),
                f"h{i}",
                vectors[i % len(labels)],
            )
            for i in range(images)
        ]
        frame = spark.createDataFrame(
            [(path, label, key, "bench", vector.astype(float).tolist()) for path, label, key, vector in rows],
            "path string, label string, content_hash string, embedding string, features array<float>",
        )
        frame.repartition(8).write.mode("overwrite").parquet(layout.dataset("features"))
    figures = {}
    for name, extra in settings.items():
        argv = ["--output", str(output), "--dt", layout.dt, *extra]
        with TreeMemory() as memory:
            quality.main(argv)
        stats = json.loads((output / "_stats" / f"dt={layout.dt}" / "quality.json").read_text())
        figures[name] = {
            "seconds_in_job": stats["seconds"],
            "peak_rss_mb": round(memory.peak_mb),
            "near_duplicate_pairs": stats["near_duplicate_pairs"],
            "suspicious_labels": stats["suspicious_labels"],
            "load_average_after": os.getloadavg()[0],
        }
        print(f"cost at {images} rows, {name}: {json.dumps(figures[name])}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SHARED_IMAGES), help="folder of labelled photos")
    parser.add_argument("--weights", default=default_weights(), help=WEIGHTS_HELP)
    parser.add_argument("--per-label", type=int, default=100, help="originals taken from each label")
    parser.add_argument("--work-dir", default=str(PROJECT_ROOT / "out" / "bench" / "quality"))
    parser.add_argument(
        "--cost",
        type=int,
        default=0,
        help="only time the step on this many features rows: every check on, near-duplicates off, all off",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="with --cost: only this setting (repeatable)"
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    print(
        f"bench_quality: {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"source {args.source}, weights {args.weights}"
    )
    data = calibration_set(Path(args.source), args.per_label, args.weights, work)
    from fruits_platform.tools.bench_spark import local_spark

    if args.cost:
        spark = local_spark("4g", **{"spark.sql.shuffle.partitions": "8"})
        # the cheap settings first: on a loaded machine the last may not finish
        settings = {
            "every check off": [
                "--near-duplicate-similarity",
                "0",
                "--label-margin",
                "0",
                "--drift-threshold",
                "0",
            ],
            "near-duplicates off": ["--near-duplicate-similarity", "0"],
            "every check on": [],
        }
        settings = {name: extra for name, extra in settings.items() if not args.only or name in args.only}
        try:
            figures = cost(spark, data, args.cost, work, settings)
        finally:
            spark.stop()
        (work / f"cost_{args.cost}.json").write_text(json.dumps(figures, indent=2))
        return 0
    n = len(data["labels"])
    print(
        f"near-duplicates: {n} originals, each with {len(data['kinds'])} copies ({', '.join(data['kinds'])})"
    )
    spark = local_spark("3g", **{"spark.sql.shuffle.partitions": "8"})
    try:
        duplicates = near_duplicate_figures(spark, data)
        labels = label_figures(spark, data)
    finally:
        spark.stop()
    for row in duplicates:
        recall = ", ".join(f"{kind} {value:.0%}" for kind, value in row["recall"].items())
        print(
            f"  similarity >= {row['similarity'] / 1000:.3f}: recall {recall}; flagged among "
            f"{row['non_copy_pairs']} pairs that are not copies: {row['false_pairs_same_label']} of the same "
            f"label, {row['false_pairs_other_labels']} of different labels (exact cosines: "
            f"{row['exact_false_pairs']}, {row['exact_false_pairs_other_labels']}; recall "
            f"{', '.join(f'{v:.0%}' for v in row['exact_recall'].values())})"
        )
    print(f"  (the LSH join at the lowest threshold: {duplicates[0]['join_seconds']} s)")
    print(f"suspicious labels: {labels[0]['moved']} of {n} photos filed under the next label")
    for row in labels:
        print(
            f"  margin >= {row['margin'] / 1000:.3f}: recall {row['recall']:.0%}, false flags "
            f"{row['false_flags']} of {row['untouched']} untouched ({row['false_flag_rate']:.1%})"
        )
    drift = drift_figures(data)
    print(f"drift: centroid distance between two halves of a label's photos {drift['halves']}")
    print(f"       with a quarter of its photos from the next label {drift['quarter_of_another_label']}")
    (work / f"bench_quality_{args.per_label}.json").write_text(
        json.dumps({"near_duplicates": duplicates, "labels": labels, "drift": drift}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
