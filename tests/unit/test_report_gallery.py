"""The gallery's views and pages, from bulk inference rows (no thumbnails: no Ray)."""

from __future__ import annotations

import json

import pandas as pd
from report_support import THRESHOLD, write_part
from synthetic import GENRES

from poster_ray.layout import GalleryDir
from poster_ray.report.gallery import (
    genres_of,
    page_records,
    read_predictions,
    view_rows,
    write_pages,
)


def predictions(tmp_path, count=10, errors=(3,)):
    out = tmp_path / "predictions"
    paths = [f"/posters/p{i}.jpg" for i in range(count)]
    write_part(out, 0, paths, ["broken: bad" if i in errors else "" for i in range(count)])
    rows = read_predictions(GalleryDir(out).root.parent, ["part-000000.parquet"])
    rows["thumb"] = ""
    return out, rows


def test_views_filter_by_genre_above_threshold_and_order_by_confidence(tmp_path):
    _, rows = predictions(tmp_path)
    genres = genres_of(rows)
    assert genres == sorted(GENRES)
    views = view_rows(rows, genres)
    assert list(views["errors"]) == [3]
    assert len(views["all"]) == 10 and 3 not in views["all-uncertain"]
    confidence = rows["top1_prob"].to_numpy()
    assert (pd.Series(confidence[views["all-uncertain"]]).diff().dropna() >= 0).all()
    for index, genre in enumerate(genres):
        chosen = views[f"genre-{index:02d}"]
        assert all(genre in rows["above_threshold"][row] for row in chosen)
        others = set(range(10)) - set(chosen)
        assert all(genre not in rows["above_threshold"][row] for row in others)
        assert sorted(views[f"genre-{index:02d}-uncertain"]) == sorted(chosen)
    assert THRESHOLD > 0.3  # the second genre, at 0.3, is never above threshold
    assert sum(len(views[f"genre-{i:02d}"]) for i in range(len(genres))) == 9


def test_pages_hold_page_size_rows_and_error_rows_keep_their_message(tmp_path):
    out, rows = predictions(tmp_path)
    gallery = GalleryDir(out)
    views = write_pages(gallery, rows, view_rows(rows, genres_of(rows)), page_size=4)
    assert views["all"] == {"rows": 10, "pages": 3}

    def page(view, number):
        text = (gallery.root / gallery.view_page(view, number)).read_text()
        assert text.startswith("galleryPage(") and text.endswith(");\n")
        return json.loads(text[len("galleryPage(") : -3])

    assert [len(page("all", n)["rows"]) for n in (1, 2, 3)] == [4, 4, 2]
    (error,) = page("errors", 1)["rows"]
    assert error[0] == "p3" and error[5] == "broken: bad" and error[3] == []


def test_page_records_carry_the_top_genres_with_probabilities(tmp_path):
    _, rows = predictions(tmp_path, errors=())
    ident, thumb, path, top, above, error = page_records(rows)[0]
    assert (ident, path, error) == ("p0", "/posters/p0.jpg", "")
    assert top[0] == [GENRES[0], 0.9] and top[1] == [GENRES[1], 0.3] and len(top) == 3
    assert above == [GENRES[0]]
