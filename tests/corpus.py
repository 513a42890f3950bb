"""Generated inputs of every awkward kind a public mobile app sends, each with the outcome it must get."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# (relative path) -> expected outcome: "ok", a rejection reason, "duplicate", or "ignored"
EXPECTED_OUTCOMES: dict[str, str] = {}


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.full((height, width), 90, np.uint8)), -1)
    return Image.fromarray(pixels, "RGB")


def exif_with_gps_and_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x0110] = "FruitPhone 12"  # camera model: personal metadata
    gps = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # a position in Paris
    exif[0x8825] = gps
    return exif


def awkward_files() -> dict[str, tuple[bytes, str]]:
    """relative path -> (bytes, expected outcome)."""
    red = Image.new("RGB", (40, 30), (220, 20, 30))
    valid_jpeg = _jpeg(gradient())
    sixteen_bit = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent blue
    palette = red.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return {
        "apple/zero.jpg": (b"", "empty"),
        "apple/text.jpg": (b"this is not an image, only text with an image extension\n" * 4, "not_an_image"),
        "apple/truncated.jpg": (valid_jpeg[: len(valid_jpeg) // 2], "truncated"),
        "apple/bomb.png": (_png(Image.new("1", (12000, 12000))), "too_large"),
        "lemon/grey.jpg": (_jpeg(red.convert("L")), "ok"),
        "lemon/cmyk.JPG": (_jpeg(red.convert("CMYK")), "ok"),
        "lemon/palette.png": (_png(palette), "ok"),
        "mango/rgba.PNG": (_png(rgba), "ok"),
        "mango/deep16.png": (_png(sixteen_bit), "ok"),
        "mango/rotated_gps.jpeg": (_jpeg(gradient(60, 30), exif=exif_with_gps_and_orientation(6)), "ok"),
        "raspberry/notes.txt": (b"shopping list", "ignored"),
        "raspberry/.hidden.jpg": (valid_jpeg, "ignored"),
        "raspberry/_tmp/partial.jpg": (valid_jpeg, "ignored"),
    }


def write_mixed_folder(target: Path, real_images: list[Path]) -> dict[str, str]:
    """Real images + the awkward files + a duplicate of the first real image; returns expected outcomes."""
    expected = {}
    for source in real_images:
        relative = f"{source.parent.name}/{source.name}"
        (target / source.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / relative)
        expected[relative] = "ok"
    for relative, (data, outcome) in awkward_files().items():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(data)
        expected[relative] = outcome
    first = real_images[0]
    duplicate = f"{first.parent.name}/zz_copy_of_{first.name}"
    shutil.copyfile(first, target / duplicate)
    expected[duplicate] = "duplicate"
    return expected


def copy_sample(sample_dir: Path, root: Path, per_label: int) -> Path:
    """``root`` with the first ``per_label`` real images of each label folder of data/sample."""
    for label in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        (root / label.name).mkdir(parents=True)
        for image in sorted(label.glob("*.jpg"))[:per_label]:
            shutil.copyfile(image, root / label.name / image.name)
    return root
