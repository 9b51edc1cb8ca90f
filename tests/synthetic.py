"""Small synthetic copies of the Movies-Poster dataset layout: train.csv + Images/<Id>.jpg.

Posters are tiny noisy images tinted by their genres (so a model could learn something),
and the CSV has the published header: Id, Genre, then one-hot genre columns in
alphabetical order with the non-genre `N/A` column among them. Options add the kinds of
dirt the real dataset (or a user's copy of it) can contain.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Western"]
# The published dataset's 24 genres, in its header's order.
REAL_GENRES = [
    "Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary",
    "Drama", "Family", "Fantasy", "History", "Horror", "Music", "Musical", "Mystery",
    "News", "Reality-TV", "Romance", "Sci-Fi", "Short", "Sport", "Thriller", "War", "Western",
]  # fmt: skip
# The last three genres of `genres` get exactly this many posters (1, 3 and 4).
RARE_COUNTS = (4, 3, 1)
POSTER_SIZE = (40, 60)  # width, height

# Ids of the special rows, so tests can look for them.
DUPLICATE_ID = "tt0000001"  # repeated as an identical row
CONFLICT_ID = "tt0000002"  # repeated with different labels; the first row must win
NA_IDS = ("na0001", "na0002")  # flagged N/A (their posters exist)
MISSING_IDS = ("missing0001", "missing0002")  # no image file
BROKEN_IDS = {"truncated": "bad_truncated", "empty": "bad_empty", "text": "bad_text"}
MODE_IDS = {
    "L": "mode_l",
    "CMYK": "mode_cmyk",
    "P": "mode_p",
    "RGBA": "mode_rgba",
    "I;16": "mode_i16",
}
# The data stage's tests share one prepare run of a dataset with every kind of dirt
# (conftest's `dirty_run`): these options, good posters and image size.
DIRTY = dict(duplicates=True, na_rows=True, missing_images=True, broken_files=True, modes=True)
DIRTY_GOOD_POSTERS = 50
DIRTY_IMAGE_SIZE = 24


def genre_colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per genre index."""
    hue = (index * 0.61803) % 1.0
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), 220, 230)).convert("RGB")
    return rgb.getpixel((0, 0))


def make_poster(
    path: Path,
    size: tuple[int, int] = POSTER_SIZE,
    mode: str = "RGB",
    color: tuple[int, int, int] = (200, 40, 40),
    noise: int = 0,
    seed: int = 0,
) -> Path:
    """Write a poster of `color` (+- `noise`) in the given PIL mode.

    RGB, L and CMYK are saved as JPEG; P, RGBA and I;16 as PNG bytes (under whatever
    name `path` has: PIL sniffs the content). RGBA posters are transparent in their
    bottom half; I;16 posters hold the 8-bit gray level times 257 (full 16-bit range).
    """
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = np.broadcast_to(np.array(color, dtype=np.int16), (height, width, 3))
    if noise:
        pixels = pixels + rng.integers(-noise, noise + 1, size=(height, width, 3))
    rgb = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if mode in ("RGB", "L", "CMYK"):
        rgb.convert(mode).save(path, "JPEG", quality=92)
    elif mode == "P":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, "PNG")
    elif mode == "RGBA":
        rgba = rgb.convert("RGBA")
        alpha = np.full((height, width), 255, dtype=np.uint8)
        alpha[height // 2 :] = 0
        rgba.putalpha(Image.fromarray(alpha, "L"))
        rgba.save(path, "PNG")
    elif mode == "I;16":
        gray = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(path, "PNG")
    else:
        raise ValueError(f"unsupported mode {mode}")
    return path


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    return bytes(data)


def header(genres: list[str]) -> list[str]:
    """The published column order: Id, Genre, genres and N/A sorted together."""
    return ["Id", "Genre", *sorted([*genres, "N/A"])]


def csv_row(poster_id: str, labels: set[str], genres: list[str], na: bool = False) -> dict:
    row = {"Id": poster_id, "Genre": str(sorted(labels) or ["N/A"])}
    row.update({genre: int(genre in labels) for genre in genres})
    row["N/A"] = int(na)
    return row


def make_dataset(
    root: Path,
    n: int = 60,
    seed: int = 0,
    genres: list[str] = GENRES,
    duplicates: bool = False,
    na_rows: bool = False,
    missing_images: bool = False,
    broken_files: bool = False,
    modes: bool = False,
) -> Path:
    """Write `n` good posters (plus the requested dirty rows) under `root`; returns root.

    - duplicates: DUPLICATE_ID repeated identically, CONFLICT_ID with other labels
    - na_rows: NA_IDS flagged N/A with no genre (as in the real CSV), images present
    - missing_images: MISSING_IDS in the CSV with no image file
    - broken_files: BROKEN_IDS: a truncated JPEG, a 0-byte file, a text file
    - modes: MODE_IDS: posters stored as L, CMYK, P, RGBA and 16-bit grayscale
    The last three genres get exactly 4, 3 and 1 posters; the rest are common.
    """
    rng = np.random.default_rng(seed)
    images = root / "Images"
    images.mkdir(parents=True, exist_ok=True)
    common = genres[: len(genres) - len(RARE_COUNTS)]
    rare = dict(zip(genres[len(common) :], RARE_COUNTS, strict=True))
    rare_slots = [genre for genre, count in rare.items() for _ in range(count)]
    assert n > len(rare_slots) + 2, "too few posters for the rare genres"

    rows = []

    def add(poster_id: str, labels: set[str], mode: str = "RGB", na: bool = False) -> None:
        index = [genres.index(genre) for genre in labels] or [0]
        colour = np.mean([genre_colour(i) for i in index], axis=0).astype(int)
        path = images / f"{poster_id}.jpg"
        make_poster(path, mode=mode, color=tuple(colour), noise=30, seed=len(rows) + seed)
        rows.append(csv_row(poster_id, labels, genres, na))

    # Rare genres go to posters 3.. so that DUPLICATE_ID and CONFLICT_ID stay common.
    for number in range(1, n + 1):
        labels = set(rng.choice(common, size=rng.integers(1, 3), replace=False).tolist())
        if 3 <= number < 3 + len(rare_slots):
            labels.add(rare_slots[number - 3])
        add(f"tt{number:07d}", labels)

    if modes:
        for mode, poster_id in MODE_IDS.items():
            add(poster_id, {common[len(rows) % len(common)]}, mode=mode)
    if na_rows:
        for poster_id in NA_IDS:
            add(poster_id, set(), na=True)
    if missing_images:
        for poster_id in MISSING_IDS:
            rows.append(csv_row(poster_id, {common[0]}, genres))
    if broken_files:
        for kind, poster_id in BROKEN_IDS.items():
            add(poster_id, {common[1]})
            path = images / f"{poster_id}.jpg"
            if kind == "truncated":
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            elif kind == "empty":
                path.write_bytes(b"")
            else:
                path.write_text("this is not an image\n")
    if duplicates:
        first = next(row for row in rows if row["Id"] == DUPLICATE_ID)
        rows.append(dict(first))
        conflict = dict(next(row for row in rows if row["Id"] == CONFLICT_ID))
        for genre in common:  # flip every common genre: surely different labels
            conflict[genre] = 1 - conflict[genre]
        conflict["Genre"] = str(sorted(genre for genre in genres if conflict[genre]))
        rows.append(conflict)

    pd.DataFrame(rows, columns=header(genres)).to_csv(root / "train.csv", index=False)
    return root


def prepared_run(root: Path, n: int, image_size: int, seed: int = 0):
    """`n` synthetic posters under root/dataset, prepared at `image_size` into root/run."""
    from poster_ray.config import PreprocessSpec
    from poster_ray.data.prepare import prepare
    from poster_ray.layout import RunDir

    run = RunDir(root / "run")
    prepare(make_dataset(root / "dataset", n=n, seed=seed), run, PreprocessSpec(image_size), seed=0)
    return run
