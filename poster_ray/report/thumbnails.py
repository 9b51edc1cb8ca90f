"""Poster thumbnails: one small JPEG each, made once.

The run report embeds a few; a gallery makes one per prediction with a Ray Data job
(`make_thumbnails`), so 500,000 posters are decoded in parallel across the cluster and a
rerun makes only the thumbnails that are missing.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
from PIL import Image

from poster_ray.images import describe_error, to_rgb
from poster_ray.storage import Location, read_file_bytes

# Posters are about 2:3; a thumbnail fits this box, a few KB as JPEG.
THUMB_SIZE = (120, 180)
JPEG_QUALITY = 80
# Posters per Ray Data task: enough to amortise a task's cost, small enough to spread.
ROWS_PER_TASK = 256


def thumbnail_key(path: str) -> str:
    """A poster's thumbnail name, from its path: stable across reruns and part files."""
    return hashlib.sha1(path.encode()).hexdigest()[:20]


def thumbnail_bytes(data: bytes) -> bytes:
    """A poster file's bytes -> a JPEG that fits THUMB_SIZE (JPEGs decode at a reduced
    scale for free, which is most of the speed)."""
    with Image.open(io.BytesIO(data)) as poster:
        poster.draft("RGB", THUMB_SIZE)
        rgb = to_rgb(poster)
        rgb.thumbnail(THUMB_SIZE, Image.Resampling.BILINEAR)
        out = io.BytesIO()
        rgb.save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def poster_thumbnail(path: str) -> bytes | None:
    """A poster's thumbnail, or None when its file cannot be read as an image."""
    try:
        return thumbnail_bytes(read_file_bytes(path))
    except Exception:  # noqa: BLE001 - a broken poster shows as a blank box
        return None


def write_thumbnail_batch(batch: dict[str, np.ndarray], folder: str) -> dict[str, np.ndarray]:
    """Ray Data task: path, thumb (relative to `folder`) -> the thumbnail written, and
    error ("" when it was)."""
    root = Location.of(folder)
    errors = np.full(len(batch["path"]), "", dtype=object)
    for row, (path, thumb) in enumerate(zip(batch["path"], batch["thumb"], strict=True)):
        try:
            (root / str(thumb)).write_bytes(thumbnail_bytes(read_file_bytes(str(path))), sync=False)
        except Exception as error:  # noqa: BLE001 - one broken poster must not stop the job
            errors[row] = describe_error(error)
    return {"thumb": batch["thumb"], "error": errors}


def make_thumbnails(todo: pd.DataFrame, folder: Location) -> pd.DataFrame:
    """Write the thumbnail of every row of `todo` (path, thumb) under `folder` with a Ray
    Data job; returns thumb and error for each."""
    import ray

    from poster_ray.runtime import without_progress_bars

    if todo.empty:
        return pd.DataFrame({"thumb": [], "error": []})
    with without_progress_bars():
        dataset = ray.data.from_pandas(todo[["path", "thumb"]]).repartition(
            -(-len(todo) // ROWS_PER_TASK)
        )
        written = dataset.map_batches(
            write_thumbnail_batch,
            fn_kwargs={"folder": folder.uri},
            batch_size=ROWS_PER_TASK,
            batch_format="numpy",
        )
        return written.to_pandas()
