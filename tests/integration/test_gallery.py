"""A bulk job's gallery: thumbnails by a Ray Data job, made once; reruns add only the new."""

from __future__ import annotations

import pytest
from report_support import make_posters, write_part

from poster_ray.config import ReportSettings
from poster_ray.layout import GalleryDir
from poster_ray.report import write_report

pytestmark = pytest.mark.usefixtures("ray_session")


def thumbnails(gallery: GalleryDir) -> dict[str, int]:
    return {path: gallery.root.fs.get_file_info(path).mtime_ns for path in gallery.thumbs.files()}


def test_gallery_makes_each_thumbnail_once_and_a_rerun_adds_only_new_parts(tmp_path, capsys):
    posters = make_posters(tmp_path / "posters", 7)
    missing = str(tmp_path / "posters" / "gone.jpg")
    out = tmp_path / "predictions"
    write_part(out, 0, [*posters[:4], missing], ["", "", "", "", "FileNotFoundError: gone"])
    settings = ReportSettings(page_size=3)

    page = write_report(str(out), settings)
    gallery = GalleryDir(out)
    assert page == gallery.page and "4 thumbnails to make" in capsys.readouterr().out
    first = thumbnails(gallery)
    assert len(first) == 4  # not for the error row

    write_report(str(out), settings)
    assert "up to date" in capsys.readouterr().out

    write_part(out, 1, posters[4:], ["", "", ""])
    write_report(str(out), settings)
    assert "3 thumbnails to make, 4 made before" in capsys.readouterr().out
    second = thumbnails(gallery)
    assert len(second) == 7
    assert all(second[path] == mtime for path, mtime in first.items())  # not made again
    assert "8 posters, 1 errors" in page.read_text()
