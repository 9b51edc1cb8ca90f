"""Shared builders for the bulk-inference tests: a tiny bundle, an archive, the output."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import tf_keras as keras
from PIL import Image
from synthetic import make_poster, png_claiming_size

from poster_ray import models
from poster_ray.bundle import write_bundle
from poster_ray.config import PreprocessSpec

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
SPEC = PreprocessSpec(32)
THRESHOLDS = [0.5, 0.5, 0.5, 0.5, 0.5]
# The archive's files that must become error rows, by stem, and their error types.
BROKEN = {
    "truncated": "OSError",
    "empty": "ValueError",
    "notes": "UnidentifiedImageError",
    "bomb": "DecompressionBombError",
    "missing": "FileNotFoundError",  # only in the list file: it names a file that is not there
}


def make_bundle(directory: Path) -> Path:
    """A bundle of a tiny untrained CNN over five genres, at 32x32 px."""
    keras.utils.set_random_seed(0)
    model = models.build_custom_cnn(
        len(GENRES), image_size=SPEC.image_size, filters=(4, 4), dense_units=(8,)
    )
    model.save(directory / "model.keras")
    write_bundle(directory / "bundle", directory / "model.keras", GENRES, SPEC, THRESHOLDS, {}, {})
    return directory / "bundle"


def make_archive(root: Path) -> Path:
    """Posters in every mode and format, odd names, a subfolder, and broken files."""
    (root / "sub dir").mkdir(parents=True)
    for i in range(8):
        make_poster(root / f"tt{i:07d}.jpg", color=(30 * i, 90, 200 - 20 * i), noise=20, seed=i)
    for mode in ("L", "CMYK", "P", "RGBA", "I;16"):
        make_poster(root / f"mode_{mode.replace(';', '')}.png", mode=mode)
    make_poster(root / "affiche d'été – 東京.jpg")
    make_poster(root / "sub dir" / "UPPER CASE.JPEG")
    for extension in ("webp", "bmp", "gif"):
        Image.new("RGB", (40, 60), (10, 120, 30)).save(root / f"format.{extension}")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(make_poster(root / "whole.jpg").read_bytes()[:300])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(png_claiming_size(20_000, 20_000))
    (root / "readme.txt").write_text("not a poster: no image extension\n")
    return root


def image_files(root: Path) -> list[str]:
    return sorted(str(path) for path in root.rglob("*") if path.suffix != ".txt" and path.is_file())


def read_output(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(part) for part in sorted(out.glob("part-*.parquet"))])


def mtimes(out: Path) -> dict[str, int]:
    return {part.name: part.stat().st_mtime_ns for part in out.glob("part-*.parquet")}
