"""Phone photos (rotated by EXIF, with GPS and a device model) through ingest and features.

The photos are 2016x1512: large enough that the JPEG draft decodes them at 1/8 scale, as it does 12 MP ones.
Randomly initialised weights (``random_weights``): the property is the pipeline's arithmetic, not ImageNet's.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from fruits_platform.tools.phone_photos import (
    DEVICE_MODEL,
    PHONE_SIZE,
    draft_pixels,
    phone_photo,
    prepare_phone_photos,
)
from fruits_platform.tools.phone_photos import ORIENTATIONS as PHONE_ORIENTATIONS
from fruits_spark import features, images, ingest, model, storage
from fruits_spark.engines import onnx as onnx_engine
from fruits_spark.layout import Layout

SIZE = (2016, 1512)
ORIENTATIONS = (6, 8, 3, 1)
DAY = "2026-11-29"


def plain_pixels(data: bytes, input_size: int) -> np.ndarray:
    """The oracle: the plain computation's input, full decode, EXIF orientation, bilinear resize (float32,
    0-255); what ingest's draft decode must agree with."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(image.resize((input_size, input_size), Image.Resampling.BILINEAR), dtype=np.float32)


@pytest.fixture(scope="module")
def phone_folder(tmp_path_factory, sample_dir) -> Path:
    sources = [
        sorted((sample_dir / label).glob("*.jpg"))[0] for label in ("apple", "lemon", "mango", "raspberry")
    ]
    root = tmp_path_factory.mktemp("phone") / "in"
    for i, (source, orientation) in enumerate(zip(sources, ORIENTATIONS, strict=True)):
        (root / source.parent.name).mkdir(parents=True)
        with Image.open(source) as image:
            (root / source.parent.name / f"IMG_{i:04d}.jpg").write_bytes(
                phone_photo(image, orientation, seed=i, size=SIZE)
            )
    # the same photo uploaded twice, and two broken ones
    first = sorted(root.rglob("*.jpg"))[0]
    data = first.read_bytes()
    (root / "apple" / "IMG_again.jpg").write_bytes(data)
    (root / "apple" / "IMG_cut.jpg").write_bytes(data[: len(data) // 2])
    scan = data.index(b"\xff\xda")
    # a broken scan header: corrupt whatever the photo's bytes
    (root / "apple" / "IMG_bad.jpg").write_bytes(data[: scan + 2] + b"\xff" * 20 + data[scan + 22 :])
    return root


@pytest.fixture(scope="module")
def ingested(spark, phone_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("phone-out")
    layout = Layout(str(output), DAY)
    listing = storage.list_files(spark, str(phone_folder))
    files, unlisted = ingest.extract(spark, str(phone_folder), listing)
    params = ingest.IngestParams(
        "file:" + str(phone_folder), rows_inspected=spark.sparkContext.accumulator(0)
    )
    stats = ingest.load(ingest.transform(files, params, unlisted), layout)
    return layout, stats, params, listing


def _cut_and_corrupt(data: bytes) -> dict[str, bytes]:
    scan = data.index(b"\xff\xda")
    middle = len(data) // 2
    return {
        "cut in half": data[:middle],
        "last 2 KB missing": data[:-2000],
        "garbage entropy data": data[: scan + 200] + bytes(range(256)) * 200 + data[scan + 51400 :],
        "garbage scan header": data[: scan + 2] + b"\xff" * 20 + data[scan + 22 :],
        "stray markers": data[:middle] + b"\xff\xc8\xff\xc8" + data[middle + 4 :],
        "zeroed block": data[:middle] + b"\x00" * 50_000 + data[middle + 50_000 :],
    }


def _full_decode_verdict(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except OSError as error:
        return "truncated" if "truncated" in str(error) else "corrupt"
    return "ok"


def test_draft_decoding_rejects_what_a_full_decode_rejects(sample_dir):
    with Image.open(sorted((sample_dir / "mango").glob("*.jpg"))[0]) as image:
        data = phone_photo(image, 6, seed=7, size=SIZE)
    verdicts = {
        name: (_full_decode_verdict(broken), images.inspect_image(broken).reason or "ok")
        for name, broken in _cut_and_corrupt(data).items()
    }
    assert all(full == draft for full, draft in verdicts.values()), verdicts
    assert verdicts["cut in half"][1] == "truncated"
    assert verdicts["last 2 KB missing"][1] == "truncated"
    # whether libjpeg notices garbage inside the entropy-coded data depends on the bytes: only the
    # agreement above is asserted for it; a broken scan header always fails
    assert verdicts["garbage scan header"][1] == "corrupt"


def test_a_bomb_is_refused_from_its_header_alone():
    # 9000 x 9000 declared: refused before any pixel is decoded (the scan data here is absent)
    buffer = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(buffer, format="JPEG", quality=10)
    header_only = buffer.getvalue()[:2000]
    result = images.inspect_image(header_only, max_pixels=50_000_000)
    assert result.reason == "too_large", result.detail


def test_every_phone_photo_is_accounted_for_and_decoded_once(ingested):
    _, stats, params, listing = ingested
    assert stats["ok"] == len(ORIENTATIONS)
    assert stats["duplicates"] == 1
    assert stats["rejected_by_reason"] == {"corrupt": 1, "truncated": 1}
    assert stats["classified"] == len(listing)
    # three outputs written and counted, one duplicate search: still one decode per file
    assert params.rows_inspected.value == len(listing)


def test_curated_rows_keep_the_displayed_size_and_no_metadata(ingested, phone_folder):
    layout, *_ = ingested
    rows = pq.read_table(layout.dataset("images").removeprefix("file:")).to_pylist()
    by_name = {Path(row["path"]).name: row for row in rows}
    for i, orientation in enumerate(ORIENTATIONS):
        row = by_name[f"IMG_{i:04d}.jpg"]
        # 6 and 8 are portrait: shown 1512 wide and 2016 high
        expected = SIZE[::-1] if orientation in (6, 8) else SIZE
        assert (row["width"], row["height"]) == expected
        stored = Image.open(io.BytesIO(row["content"]))
        assert stored.size == (224, 224)
        assert not stored.getexif()
        assert "exif" not in stored.info
    # everything ingest wrote (images, rejections, stats), as bytes on disk
    output = Path(layout.output.removeprefix("file:"))
    written = b"".join(p.read_bytes() for p in output.rglob("*") if p.is_file())
    for tag in (DEVICE_MODEL.encode(), b"Exif", b"Fruits"):
        assert tag not in written
    assert all(tag not in row["content"] for row in rows for tag in (DEVICE_MODEL.encode(), b"Exif"))


def _pipeline_features(spark, layout: Layout, weights: Path) -> dict[str, np.ndarray]:
    exported = onnx_engine.prepare_model(spark, str(weights), 224)
    params = features.FeatureParams(spark.sparkContext.broadcast(exported), exported.weights_digest)
    rows = features.transform(features.extract(spark, layout.dataset("images")), params).collect()
    assert all(row["error"] is None for row in rows)
    return {Path(row["path"]).name: np.asarray(row["features"], dtype=np.float64) for row in rows}


def _keras(weights: Path, batch: list[np.ndarray]) -> np.ndarray:
    backbone = model.build_backbone(224)
    backbone.load_weights(str(weights))
    return backbone.predict(images.preprocess(np.stack(batch)), verbose=0)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


NAMES = [f"IMG_{i:04d}.jpg" for i in range(len(ORIENTATIONS))]


def _originals(phone_folder: Path) -> list[bytes]:
    found = {path.name: path.read_bytes() for path in phone_folder.rglob("IMG_0*.jpg")}
    return [found[name] for name in NAMES]


# ingest and features over Spark with an ONNX export and a Keras reference: minutes, not seconds
@pytest.mark.slow
def test_pipeline_features_equal_the_plain_computation(spark, ingested, phone_folder, shared_weights):
    """The property that matters, on the pretrained weights: Pillow full decode, exif_transpose, bilinear
    resize to 224 and Keras predict give the features the pipeline computes from its draft decode."""
    layout, *_ = ingested
    actual = _pipeline_features(spark, layout, shared_weights)
    expected = _keras(shared_weights, [plain_pixels(data, 224) for data in _originals(phone_folder)])
    cosines = {
        name: _cosine(actual[name], reference) for name, reference in zip(NAMES, expected, strict=True)
    }
    assert min(cosines.values()) >= 0.999, cosines


@pytest.mark.slow
def test_pipeline_features_follow_the_photo_as_displayed(spark, ingested, phone_folder, random_weights):
    """Without ../shared: random weights amplify sub-grey-level differences (i.i.d. noise of 0.3 grey
    levels alone drops them to cosine 0.998), so the plain computation is compared in pixels, and the
    features against Keras on the same draft decode as the bare reference's."""
    layout, *_ = ingested
    originals = _originals(phone_folder)
    stored = {
        Path(row["path"]).name: images.decode_rgb(row["content"], 224)
        for row in pq.read_table(layout.dataset("images").removeprefix("file:")).to_pylist()
    }
    for name, data in zip(NAMES, originals, strict=True):
        difference = np.abs(stored[name] - plain_pixels(data, 224))
        # the draft decode moves a pixel by a fraction of a grey level on average: rotated wrongly, by tens
        assert difference.mean() < 0.5, (name, difference.mean())
    actual = _pipeline_features(spark, layout, random_weights)
    expected = _keras(random_weights, [draft_pixels(data, 224) for data in originals])
    for name, reference in zip(NAMES, expected, strict=True):
        assert _cosine(actual[name], reference) >= 0.9999, name
    # the orientation matters: the photo as stored (unrotated) gives other features
    unrotated = (
        Image.open(io.BytesIO(originals[0])).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    )
    wrong = _keras(random_weights, [np.asarray(unrotated, dtype=np.float32)])[0]
    assert _cosine(actual[NAMES[0]], wrong) < 0.999


def test_bench_photos_weigh_like_phone_photos_and_carry_their_metadata(sample_dir, tmp_path):
    """`fruits bench --phone-photos`: 12 MP JPEGs of 2-5 MB, portrait ones stored landscape, GPS on all."""
    paths = prepare_phone_photos(sample_dir, 2, tmp_path / "phone")
    assert len(paths) == 2
    for path, orientation in zip(paths, PHONE_ORIENTATIONS, strict=False):
        assert 2 * 2**20 <= path.stat().st_size <= 5 * 2**20, path.stat().st_size
        with Image.open(path) as image:
            assert image.size == PHONE_SIZE
            exif = image.getexif()
            assert exif[0x0112] == orientation
            assert exif.get_ifd(0x8825)  # GPS
    # asked again for the same set, the photos are kept, not made again, however the source is named
    before = [path.stat().st_mtime_ns for path in paths]
    assert prepare_phone_photos(sample_dir, 2, tmp_path / "phone") == paths
    relative = Path(os.path.relpath(sample_dir, Path.cwd()))
    assert prepare_phone_photos(relative, 2, tmp_path / "phone") == paths
    assert [path.stat().st_mtime_ns for path in paths] == before


def tiny_onnx(path: Path, input_size: int) -> Path:
    """An ONNX model of the backbone's shapes (N, S, S, 3) -> (N, 1280): mean colour through a projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    projection = numpy_helper.from_array(np.ones((3, 1280), dtype=np.float32), "projection")
    axes = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "projection"], ["features"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, input_size, input_size, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1280])],
        [projection, axes],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_both_bare_references_read_and_hash_every_photo_once(sample_dir, tmp_path):
    """The one-decoder reference and the every-core one (a pool of decoding processes) in their own
    processes, as the bench runs them: every photo decoded, duplicates seen as such."""
    from fruits_platform.tools.phone_photos import REFERENCES, run_bare_reference

    paths = prepare_phone_photos(sample_dir, 5, tmp_path / "phone")
    paths.append(tmp_path / "phone" / "copy.jpg")
    paths[-1].write_bytes(paths[0].read_bytes())
    model = tiny_onnx(tmp_path / "tiny.onnx", 96)
    for kind in REFERENCES:
        found = run_bare_reference(paths, str(model), 96, tmp_path, kind)
        assert (found["images"], found["distinct"]) == (6, 5), kind
        assert 0 < found["seconds_decode_inference"] <= found["seconds_process"], kind
