"""Pure image functions: validation outcomes, colour conversion, orientation, metadata, preprocessing."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from fruits_spark import images
from fruits_spark.contract import INPUT_SIZES
from tests.corpus import awkward_files, exif_with_gps_and_orientation, gradient

CORPUS = awkward_files()


@pytest.mark.parametrize("name", sorted(n for n, (_, outcome) in CORPUS.items() if outcome != "ignored"))
def test_inspect_gives_the_expected_outcome(name):
    data, expected = CORPUS[name]
    result = images.inspect_image(data)
    assert (result.reason or "ok") == expected, result.detail
    # a rejection's detail is read by people: never a Python object's repr
    assert " object at 0x" not in (result.detail or "")
    if expected == "ok":
        decoded = Image.open(io.BytesIO(result.content))
        assert decoded.format == "PPM"
        assert decoded.mode == "RGB"
        assert result.content_hash == hashlib.sha256(data).hexdigest()


def _stored_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(images.inspect_image(data).content)), dtype=np.int16)


def test_colour_modes_convert_to_the_right_colours():
    red = np.array([220, 20, 30])
    for name in ("lemon/palette.png", "lemon/cmyk.JPG"):
        pixels = _stored_pixels(CORPUS[name][0])
        assert np.abs(pixels.mean(axis=(0, 1)) - red).max() < 12, name
    grey = _stored_pixels(CORPUS["lemon/grey.jpg"][0])
    assert np.ptp(grey, axis=2).max() <= 1  # greyscale stays grey in the three channels


def test_sixteen_bit_is_scaled_not_clipped():
    pixels = _stored_pixels(CORPUS["mango/deep16.png"][0])
    assert np.all(np.abs(pixels - round(40000 / 257)) <= 1)


def test_transparent_pixels_become_white():
    pixels = _stored_pixels(CORPUS["mango/rgba.PNG"][0])
    assert np.all(pixels == 255)


def test_exif_orientation_is_applied_and_metadata_dropped():
    original = CORPUS["mango/rotated_gps.jpeg"][0]
    assert Image.open(io.BytesIO(original)).getexif().get(0x8825)  # the input does carry GPS
    result = images.inspect_image(original)
    # orientation 6 means "rotate 90°": a 60x30 photo is shown 30 wide and 60 high
    assert (result.width, result.height) == (30, 60)
    stored = Image.open(io.BytesIO(result.content))
    assert stored.size == (30, 60)
    assert not stored.getexif()
    assert b"FruitPhone" not in result.content
    assert "exif" not in stored.info


def test_large_images_are_stored_at_the_largest_input_side():
    big = gradient(1600, 1200)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", exif=exif_with_gps_and_orientation(1))
    result = images.inspect_image(buffer.getvalue())
    assert (result.width, result.height) == (1600, 1200)
    side = max(INPUT_SIZES)
    assert Image.open(io.BytesIO(result.content)).size == (side, side)
    # a narrow image keeps its short side: features upsamples it once, as from the original
    narrow = io.BytesIO()
    gradient(900, 120).save(narrow, format="PNG")
    assert Image.open(io.BytesIO(images.inspect_image(narrow.getvalue()).content)).size == (side, 120)


def test_preprocessing_equals_keras_preprocess_input():
    from keras.applications.mobilenet_v2 import preprocess_input

    pixels = images.decode_rgb(images.inspect_image(CORPUS["lemon/grey.jpg"][0]).content, 96)
    assert pixels.shape == (96, 96, 3)
    np.testing.assert_allclose(images.preprocess(pixels), preprocess_input(pixels.copy()), atol=1e-6)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a/b/.x.jpg", True), ("a/_tmp/x.jpg", True), ("a/b/x.jpg", False), ("a.b/x_y.jpg", False)],
)
def test_hidden_follows_hadoop_rules(path, expected):
    assert images.is_hidden(path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("x.jpg", True), ("x.JPEG", True), ("x.Png", True), ("x.gif", False), ("x.jpg.txt", False)],
)
def test_image_names(path, expected):
    assert images.is_image_name(path) is expected
