"""How the gallery scales: write it for N synthetic predictions, rerun it, open its first
page in headless Chromium.

    .venv/bin/python bench/gallery_scale.py --rows 50000 500

Each row points at its own path (a symlink to one of the dataset's posters, reused in
turn), so every row gets its own thumbnail, as in a real archive. Probabilities are
random; 0.5% of the rows are error rows. Results: bench/results/gallery_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from browser_pages import chromium, missing, open_timed
from synthetic import REAL_GENRES

from poster_ray.config import ReportSettings
from poster_ray.infer.output import JOB_FILE, part_name
from poster_ray.infer.rows import rows_table
from poster_ray.layout import GalleryDir
from poster_ray.report.gallery import write_gallery
from poster_ray.runtime import init_ray
from poster_ray.storage import Location

POSTERS = Path("../shared/datasets/movie-posters/Images")
CHUNK = 5000  # rows per part file, as a bulk job of that chunk size writes
ERROR_SHARE = 0.005
FIRST_PAGE = "document.body.dataset.loaded === 'all/1'"
# The first page's thumbnails decoded too (lazy ones below the fold are not asked for).
THUMBS_SHOWN = (
    FIRST_PAGE + " && [...document.images].filter(i => i.getBoundingClientRect().top < "
    "innerHeight).every(i => i.complete)"
)


def synthesise(out: Path, rows: int, posters: list[Path], genres: list[str]) -> None:
    """`rows` predictions in parts of CHUNK, each row its own symlinked poster."""
    links = out / "posters"
    links.mkdir(parents=True)
    rng = np.random.default_rng(0)
    predictions = out / "predictions"
    predictions.mkdir()
    for chunk, start in enumerate(range(0, rows, CHUNK)):
        count = min(CHUNK, rows - start)
        paths = []
        for i in range(start, start + count):
            link = links / f"p{i:07d}.jpg"
            os.symlink(posters[i % len(posters)].resolve(), link)
            paths.append(str(link))
        errors = np.where(rng.random(count) < ERROR_SHARE, "OSError: synthetic error", "")
        probabilities = rng.beta(0.5, 3, size=(count, len(genres))).astype(np.float32)
        table = rows_table(
            np.array(paths, dtype=object), errors.astype(object), probabilities, genres,
            np.full(len(genres), 0.3, dtype=np.float32), "bench", False,
        )  # fmt: skip
        pq.write_table(table, predictions / part_name(chunk))
    (predictions / JOB_FILE).write_text(json.dumps({"bundle_hash": "bench"}))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(rows: int, scratch: Path, genres: list[str], posters: list[Path]) -> dict:
    out = scratch / f"gallery-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    synthesise(out, rows, posters, genres)
    predictions = Location.of(out / "predictions")
    started = time.perf_counter()
    page = write_gallery(predictions, ReportSettings())
    first = time.perf_counter() - started
    started = time.perf_counter()
    write_gallery(predictions, ReportSettings())
    rerun = time.perf_counter() - started
    gallery = GalleryDir(predictions)
    result = {
        "rows": rows,
        "write_s": round(first, 1),
        "rerun_s": round(rerun, 2),
        "thumbnails": len(gallery.thumbs.files()),
        "gallery_mb": round(folder_bytes(Path(gallery.root.path)) / 1e6, 1),
        "page_files": sum(1 for _ in Path(gallery.root.path, "pages").rglob("*.js")),
    }
    if not missing():
        with chromium() as driver:
            result["first_page"] = open_timed(driver, page.local_path, FIRST_PAGE)
            result["first_page_with_thumbnails"] = open_timed(driver, page.local_path, THUMBS_SHOWN)
    print(json.dumps(result), flush=True)
    shutil.rmtree(out / "posters")  # keep the gallery for a look, not 50k symlinks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50000, 500])
    parser.add_argument("--posters", type=Path, default=POSTERS)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/poster-ray-gallery-bench"))
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gallery_scale.json"))
    args = parser.parse_args()
    posters = sorted(args.posters.glob("*.jpg"))
    genres = REAL_GENRES
    started = time.perf_counter()
    init_ray(args.num_cpus, progress_bars=False)
    ray_start = round(time.perf_counter() - started, 1)
    results = [measure(rows, args.scratch, genres, posters) for rows in args.rows]
    record = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "ray_start_s": ray_start, "results": results}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
