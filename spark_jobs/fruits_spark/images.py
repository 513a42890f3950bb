"""Decoding, validation and preprocessing of single images: pure functions, no Spark, no TensorFlow."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fruits_spark.contract import IMAGE_EXTENSIONS

# A phone photo is ~12-50 MP; anything far above is a decompression bomb, refused from the header alone.
MAX_PIXELS = 80_000_000
# Curated copies are capped: the model never needs more than 2x its largest input side.
MAX_STORED_SIDE = 448

# Truncated files must be rejected, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class Inspection:
    """What ingestion learns from one file: either a clean RGB copy or the reason it is unusable."""

    reason: str | None
    detail: str | None = None
    width: int | None = None
    height: int | None = None
    content: bytes | None = None


# "is this an image name": a case-insensitive extension match, as a Java regex for ingest's Spark column
# and for Python alike
IMAGE_NAME_REGEX = "(?i)(" + "|".join(re.escape(ext) for ext in IMAGE_EXTENSIONS) + ")$"


def is_image_name(path: str) -> bool:
    return re.search(IMAGE_NAME_REGEX, str(path)) is not None


def is_hidden(relative_path: str) -> bool:
    """Hidden by Hadoop's rules: any path component starting with '.' or '_'."""
    return any(part.startswith((".", "_")) for part in str(relative_path).split("/") if part)


def is_input_image(relative_path: str) -> bool:
    """What a run reads as an image below its input: an image name, not hidden (ingest, `fruits upload`, the
    cost guard's count and the bench all use this rule)."""
    return is_image_name(relative_path) and not is_hidden(relative_path)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with the right colours for every mode a phone or an editor produces."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: a plain convert() would clip everything above 255 to white
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # transparent pixels carry arbitrary colours underneath: show them on white, as viewers do
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def inspect_image(data: bytes | None, max_pixels: int = MAX_PIXELS) -> Inspection:
    """Validate one file and return a clean, metadata-free PNG copy (EXIF orientation applied)."""
    if not data:
        return Inspection("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return Inspection("too_large", f"{width}x{height} pixels > {max_pixels}")
            image.load()
    except (UnidentifiedImageError, SyntaxError) as error:
        return Inspection("not_an_image", str(error)[:200])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return Inspection("too_large", str(error)[:200])
    except (OSError, ValueError) as error:
        reason = "truncated" if "truncated" in str(error).lower() else "corrupt"
        return Inspection(reason, str(error)[:200])
    try:
        image = to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError) as error:
        return Inspection("corrupt", str(error)[:200])
    width, height = image.size
    image.thumbnail((MAX_STORED_SIDE, MAX_STORED_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    # a fresh PNG carries no EXIF, GPS, device or time metadata
    image.save(buffer, format="PNG", compress_level=1)
    return Inspection(None, None, width, height, buffer.getvalue())


def decode_rgb(data: bytes, size: int) -> np.ndarray:
    """Pixels (size, size, 3) as float32 in [0, 255], resized bilinearly."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """MobileNetV2's preprocessing: [0, 255] to [-1, 1], as ``mobilenet_v2.preprocess_input`` does."""
    return pixels / np.float32(127.5) - np.float32(1.0)
