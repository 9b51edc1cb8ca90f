"""PREDICTIONS/gallery/: every prediction of a bulk inference job as a paged gallery.

One thumbnail per poster (made once, in parallel, by a Ray Data job), and each view of
the rows cut into pages, each page a small script the page loads when it is shown:
a page opened from disk may load scripts beside it but not fetch JSON, and 500,000
predictions open as fast as 500, since only the page shown is read. Views:

    all / all-uncertain            every row, in file order / lowest top-1 probability first
    errors                         the rows whose poster could not be used, with their message
    genre-NN / genre-NN-uncertain  the rows with genre NN at or above its threshold

A rerun with the same part files (and page script) does nothing; with new parts it makes
only the missing thumbnails and writes the pages again (cheap: no image is decoded).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from html import escape

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from poster_ray.config import ReportSettings
from poster_ray.infer.output import OutputFolder, part_name
from poster_ray.infer.rows import TOP_K
from poster_ray.layout import GalleryDir
from poster_ray.report.assets import GALLERY_SCRIPT, GALLERY_STYLE
from poster_ray.report.html import page
from poster_ray.report.thumbnails import make_thumbnails, thumbnail_key
from poster_ray.storage import Location

COLUMNS = ["path", "id", "above_threshold", "status", "error"] + [
    f"top{rank}_{kind}" for rank in range(1, TOP_K + 1) for kind in ("genre", "prob")
]
# Files written at once: a bucket answers each PUT in tens of milliseconds.
WRITERS = 16


def write_gallery(predictions: Location, settings: ReportSettings | None = None) -> Location:
    """Write (or bring up to date) the gallery of a bulk inference output folder; returns
    its page."""
    settings = settings or ReportSettings()
    gallery = GalleryDir(predictions)
    parts = sorted(part_name(chunk) for chunk in OutputFolder(predictions).finished_chunks())
    made_from = {"parts": parts, "page_size": settings.page_size, "script": script_version()}
    if (
        gallery.page.is_file()
        and gallery.record.is_file()
        and gallery.record.read_json() == made_from
    ):
        print(f"gallery {gallery.page}: up to date ({len(parts)} parts)", flush=True)
        return gallery.page
    rows = read_predictions(predictions, parts)
    rows["thumb"] = add_thumbnails(gallery, rows, settings.num_cpus)
    genres = genres_of(rows)
    views = view_rows(rows, genres)
    pages = write_pages(gallery, rows, views, settings.page_size)
    gallery.page.write_text(gallery_page(predictions, genres, pages, len(rows)))
    gallery.record.write_json(made_from)
    return gallery.page


def script_version() -> str:
    """A hash of the page's script and style: a gallery made by another version of them
    is written again (its thumbnails are kept)."""
    return hashlib.sha1((GALLERY_SCRIPT + GALLERY_STYLE).encode()).hexdigest()[:12]


def read_predictions(predictions: Location, parts: list[str]) -> pd.DataFrame:
    """The rows of every committed part, in chunk (so input) order."""
    paths = [(predictions / name).path for name in parts]
    dataset = pads.dataset(paths, filesystem=predictions.fs, format="parquet")
    return dataset.to_table(columns=COLUMNS).to_pandas()


def add_thumbnails(gallery: GalleryDir, rows: pd.DataFrame, num_cpus: int | None) -> pd.Series:
    """Each row's thumbnail path relative to the page ("" when there is none): the missing
    ones are made by a Ray Data job, the rest were made by an earlier run."""
    ok = rows["status"] == "ok"
    thumbs = rows["path"].map(lambda path: gallery.thumb(thumbnail_key(path))).where(ok, "")
    prefix = len(gallery.root.path) + 1
    existing = {path[prefix:] for path in gallery.thumbs.files()}
    todo = pd.DataFrame({"path": rows["path"], "thumb": thumbs})[ok & ~thumbs.isin(existing)]
    todo = todo.drop_duplicates("thumb")
    print(f"gallery: {len(todo)} thumbnails to make, {len(existing)} made before", flush=True)
    if len(todo):
        from poster_ray.runtime import init_ray

        init_ray(num_cpus)
        made = make_thumbnails(todo, gallery.root)
        failed = set(made.loc[made["error"] != "", "thumb"])
        thumbs = thumbs.where(~thumbs.isin(failed), "")
    return thumbs


def genres_of(rows: pd.DataFrame) -> list[str]:
    """Every genre the rows name, sorted: the gallery's genre filter."""
    named = set(rows["above_threshold"].explode().dropna())
    for rank in range(1, TOP_K + 1):
        named |= set(rows[f"top{rank}_genre"].dropna())
    return sorted(map(str, named))


def view_rows(rows: pd.DataFrame, genres: list[str]) -> dict[str, np.ndarray]:
    """Each view's row numbers, in its order (see the module docstring)."""
    uncertain = np.argsort(rows["top1_prob"].fillna(np.inf).to_numpy(), kind="stable")
    ok = (rows["status"] == "ok").to_numpy()
    views = {
        "all": np.arange(len(rows)),
        "all-uncertain": uncertain[ok[uncertain]],
        "errors": np.flatnonzero(~ok),
    }
    exploded = rows["above_threshold"].explode()
    for index, genre in enumerate(genres):
        has = np.zeros(len(rows), dtype=bool)
        has[exploded.index[(exploded == genre).to_numpy()]] = True
        views[f"genre-{index:02d}"] = np.flatnonzero(has)
        views[f"genre-{index:02d}-uncertain"] = uncertain[has[uncertain]]
    return views


def page_records(rows: pd.DataFrame) -> list[list]:
    """The rows as the page's script reads them: id, thumb, path, top genres with their
    probabilities, above-threshold genres, error ("" when ok)."""
    tops = [
        list(zip(rows[f"top{rank}_genre"], rows[f"top{rank}_prob"], strict=True))
        for rank in range(1, TOP_K + 1)
    ]
    records = []
    for row, (ident, thumb, path, above, error) in enumerate(
        zip(
            rows["id"],
            rows["thumb"],
            rows["path"],
            rows["above_threshold"],
            rows["error"],
            strict=True,
        )
    ):
        top = [
            [genre, round(float(prob), 3)]
            for genre, prob in (t[row] for t in tops)
            if isinstance(genre, str)
        ]
        records.append([ident, thumb, path, top, list(above), error])
    return records


def write_pages(
    gallery: GalleryDir, rows: pd.DataFrame, views: dict[str, np.ndarray], page_size: int
) -> dict[str, dict]:
    """Every view's pages as scripts under pages/; returns each view's rows and pages."""
    records = page_records(rows)
    gallery.root.mkdir()
    (gallery.root / "pages").remove()
    files = []
    for view, order in views.items():
        for start in range(0, len(order), page_size):
            number = start // page_size + 1
            body = {
                "view": view,
                "page": number,
                "rows": [records[i] for i in order[start : start + page_size]],
            }
            text = f"galleryPage({json.dumps(body, separators=(',', ':'))});\n"
            files.append((gallery.root / gallery.view_page(view, number), text))
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(lambda item: item[0].write_text(item[1], sync=False), files))
    return {
        view: {"rows": len(order), "pages": -(-len(order) // page_size)}
        for view, order in views.items()
    }


def gallery_page(
    predictions: Location, genres: list[str], views: dict[str, dict], total: int
) -> str:
    """index.html: the filters, an empty grid, and what the script needs to fetch pages."""
    options = "".join(
        f"<option value='{view}'>{escape(genre)} ({views[view]['rows']})</option>"
        for view, genre in ((f"genre-{index:02d}", genre) for index, genre in enumerate(genres))
    )
    errors = views["errors"]["rows"]
    body = (
        f"<h1>Predictions <code>{escape(predictions.uri)}</code></h1>"
        f"<p>{total} posters, {errors} errors.</p>"
        "<div class='controls'><label>show <select id='show'>"
        f"<option value='all'>every poster ({total})</option>"
        f"<option value='errors'>errors ({errors})</option>{options}</select></label>"
        " <label>order <select id='order'><option value='file'>file order</option>"
        "<option value='uncertain'>lowest confidence first</option></select></label>"
        " <button id='prev'>&larr;</button> <span id='position'></span>"
        " <button id='next'>&rarr;</button></div><div id='grid'></div>"
        f"<script type='application/json' id='views'>{json.dumps(views)}</script>"
    )
    return page(f"poster-ray gallery: {predictions.name}", body, GALLERY_STYLE, GALLERY_SCRIPT)
