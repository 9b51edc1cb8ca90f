"""Poster decoding: the one preprocessing definition shared by training and inference.

Every poster, whatever its file mode, becomes an RGB uint8 array of the spec's shape.
A file that cannot be decoded yields an error message instead of an exception, so a
batch job turns it into an error row and carries on.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile

from poster_ray.config import PreprocessSpec
from poster_ray.storage import read_file_bytes

# Posters are about 300x445 px; anything above this is a decompression bomb, not a poster.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A truncated JPEG must fail, not decode half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent areas become white, as on a page."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: bring to 8 bits before PIL's RGB conversion clips it.
        # Scale the 16-bit range (not the image's own peak: mid-gray must stay mid-gray);
        # only a 32-bit image with values beyond 16 bits falls back to its peak.
        pixels = np.clip(np.asarray(image, dtype=np.float64), 0, None)
        full_scale = max(float(pixels.max()), 65535.0)
        image = Image.fromarray(np.rint(pixels * (255.0 / full_scale)).astype(np.uint8))
    return image.convert("RGB")


def decode_poster(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """Decode encoded image bytes into an RGB uint8 array of ``spec.shape``.

    Raises ValueError (or PIL's errors) on anything that is not a usable image.
    """
    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"image too large ({width}x{height} px)")
        # JPEG can decode at 1/2, 1/4, 1/8 scale for free when the target is small.
        image.draft("RGB", (spec.image_size, spec.image_size))
        rgb = to_rgb(image)
        resized = rgb.resize((spec.image_size, spec.image_size), _RESAMPLE[spec.resample])
        return np.asarray(resized, dtype=np.uint8)


def describe_error(error: Exception) -> str:
    """One line for an error row: the exception type and its message."""
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def read_and_decode(path: str, spec: PreprocessSpec) -> tuple[np.ndarray | None, str]:
    """Read one poster file (a local path or a URI); returns (pixels, "") or (None, error
    message)."""
    try:
        return decode_poster(read_file_bytes(path), spec), ""
    except Exception as error:  # noqa: BLE001 - any failure becomes an error row
        return None, describe_error(error)


def decode_files(paths: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch of files: (images uint8 NxHxWx3, errors str N; "" means ok).

    Failed rows get an all-zero image so the batch keeps one fixed tensor shape.
    """
    images = np.zeros((len(paths), *spec.shape), dtype=np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    for row, path in enumerate(paths):
        pixels, errors[row] = read_and_decode(str(path), spec)
        if pixels is not None:
            images[row] = pixels
    return images, errors


def pack_images(images: np.ndarray) -> np.ndarray:
    """uint8 NxHxWx3 -> N raw byte strings, the cache's storage format.

    Parquet stores raw bytes 15x faster to write and 40x faster to read than Ray's
    tensor extension type (a nested list of uint8 values) for 250x250 posters.
    """
    return np.array([image.tobytes() for image in images], dtype=object)
