"""Poster decoding: every file mode becomes RGB uint8 of the spec's shape; bad files are rows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import make_poster, png_claiming_size

from poster_ray.config import PreprocessSpec
from poster_ray.data.cache import unpack_arrays
from poster_ray.images import (
    decode_files,
    decode_poster,
    pack_images,
    read_and_decode,
)

SPEC = PreprocessSpec(image_size=32)
COLOR = (200, 40, 40)


def poster_bytes(tmp_path: Path, mode: str, color=COLOR, size=(40, 60)) -> bytes:
    return make_poster(tmp_path / f"{mode.replace(';', '')}.jpg", size, mode, color).read_bytes()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "RGBA", "I;16"])
def test_every_mode_decodes_to_rgb_uint8_of_the_spec_shape(tmp_path, mode):
    data = poster_bytes(tmp_path, mode)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really is in that mode
    pixels = decode_poster(data, SPEC)
    assert pixels.shape == (32, 32, 3)
    assert pixels.dtype == np.uint8


@pytest.mark.parametrize("mode", ["RGB", "CMYK", "P"])
def test_colour_modes_keep_the_colour(tmp_path, mode):
    pixels = decode_poster(poster_bytes(tmp_path, mode), SPEC)
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), COLOR, atol=12)


def test_non_square_posters_are_squashed_not_cropped(tmp_path):
    # Left half red, right half blue on a wide image: both halves survive the resize.
    image = Image.new("RGB", (120, 30), (255, 0, 0))
    image.paste((0, 0, 255), (60, 0, 120, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    pixels = decode_poster(buffer.getvalue(), SPEC)
    assert tuple(pixels[16, 2]) == (255, 0, 0)
    assert tuple(pixels[16, 29]) == (0, 0, 255)


def test_transparent_pixels_become_white(tmp_path):
    # make_poster's RGBA poster is opaque on top, fully transparent at the bottom.
    pixels = decode_poster(poster_bytes(tmp_path, "RGBA"), SPEC)
    assert (pixels[-4:] == 255).all()
    np.testing.assert_allclose(pixels[:4].reshape(-1, 3).mean(axis=0), COLOR, atol=3)


def test_palette_transparency_becomes_white():
    image = Image.new("P", (16, 16), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(0, (0, 0, 16, 8))  # top half: palette index 0, the transparent one
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    pixels = decode_poster(buffer.getvalue(), PreprocessSpec(16))
    assert (pixels[:6] == 255).all()
    assert (pixels[-6:] == (0, 0, 255)).all()


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_grayscale_stays_gray(tmp_path, mode):
    pixels = decode_poster(poster_bytes(tmp_path, mode), SPEC).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all()
    assert (pixels[..., 1] == pixels[..., 2]).all()
    assert 0 < pixels.mean() < 255


def test_16_bit_grayscale_is_scaled_not_clipped():
    # An 8-bit gradient stored at 16 bits (v * 257) must decode exactly like the 8-bit
    # file: PIL's own conversion clips every value above 255 to white, and scaling by the
    # image's peak would stretch it.
    gradient = np.tile(np.arange(0, 256, 16, dtype=np.uint16), (16, 1))
    encoded = {}
    for name, array in {"8": gradient.astype(np.uint8), "16": gradient * 257}.items():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        encoded[name] = buffer.getvalue()
    assert Image.open(io.BytesIO(encoded["16"])).mode == "I;16"
    spec = PreprocessSpec(16)
    np.testing.assert_array_equal(
        decode_poster(encoded["16"], spec), decode_poster(encoded["8"], spec)
    )
    assert len(np.unique(decode_poster(encoded["16"], spec))) == 16


def test_16_bit_mid_gray_stays_mid_gray():
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128 * 257, dtype=np.uint16)).save(buffer, "PNG")
    assert (decode_poster(buffer.getvalue(), PreprocessSpec(16)) == 128).all()


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind that must become an error row."""
    good = make_poster(folder / "good.jpg", noise=20)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    paths = {
        "truncated": truncated,
        "empty": folder / "empty.jpg",
        "text": folder / "text.jpg",
        "bomb": folder / "bomb.jpg",
        "too_large": folder / "too_large.jpg",
        "missing": folder / "missing.jpg",
    }
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("Id,Genre\nnot an image\n")
    paths["bomb"].write_bytes(png_claiming_size(20_000, 20_000))  # over PIL's hard limit
    paths["too_large"].write_bytes(png_claiming_size(7_000, 7_000))  # over MAX_PIXELS only
    return {"good": good, **paths}


EXPECTED_ERRORS = {
    "truncated": "truncated",
    "empty": "empty file",
    "text": "UnidentifiedImageError",
    "bomb": "DecompressionBombError",
    "too_large": "too large (7000x7000 px)",
    "missing": "FileNotFoundError",
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", list(EXPECTED_ERRORS))
def test_bad_files_give_an_error_message_not_an_exception(tmp_path, kind):
    path = write_bad_files(tmp_path)[kind]
    pixels, error = read_and_decode(str(path), SPEC)
    assert pixels is None
    assert EXPECTED_ERRORS[kind] in error
    assert "\n" not in error


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decode_files_flags_bad_rows_and_keeps_the_rest(tmp_path):
    files = write_bad_files(tmp_path)
    second_good = make_poster(tmp_path / "second.jpg", color=(20, 200, 40))
    names = ["good", *EXPECTED_ERRORS, "second"]
    paths = np.array([str(files.get(name, second_good)) for name in names], dtype=object)

    images, errors = decode_files(paths, SPEC)

    assert images.shape == (len(names), 32, 32, 3)
    assert images.dtype == np.uint8
    assert errors[0] == "" and errors[-1] == ""
    for row, name in enumerate(names[1:-1], start=1):
        assert EXPECTED_ERRORS[name] in errors[row]
        assert not images[row].any()  # failed rows are all zero
    np.testing.assert_array_equal(images[0], decode_poster(files["good"].read_bytes(), SPEC))
    np.testing.assert_array_equal(images[-1], decode_poster(second_good.read_bytes(), SPEC))


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, *SPEC.shape), dtype=np.uint8)
    blobs = pack_images(images)
    assert blobs.dtype == object
    assert all(isinstance(blob, bytes) and len(blob) == 32 * 32 * 3 for blob in blobs)
    np.testing.assert_array_equal(unpack_arrays(blobs, "uint8", SPEC.shape), images)
