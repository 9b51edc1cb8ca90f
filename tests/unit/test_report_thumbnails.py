"""Thumbnails: small JPEGs of any poster; a broken file is an error, not a stop."""

from __future__ import annotations

import numpy as np
from PIL import Image
from report_support import make_posters

from poster_ray.report.thumbnails import THUMB_SIZE, thumbnail_key, write_thumbnail_batch


def test_thumbnails_fit_their_box_and_a_broken_poster_is_an_error_row(tmp_path):
    good, broken = make_posters(tmp_path / "posters", 2)
    (tmp_path / "posters" / "p00001.jpg").write_bytes(b"not an image")
    thumbs = np.array(["thumbs/aa/good.jpg", "thumbs/bb/broken.jpg"], dtype=object)
    batch = {"path": np.array([good, broken], dtype=object), "thumb": thumbs}
    result = write_thumbnail_batch(batch, str(tmp_path / "gallery"))
    assert result["error"][0] == "" and result["error"][1].startswith("UnidentifiedImageError")
    with Image.open(tmp_path / "gallery" / "thumbs/aa/good.jpg") as thumb:
        assert thumb.format == "JPEG" and thumb.width <= THUMB_SIZE[0]
        assert thumb.height <= THUMB_SIZE[1] and max(thumb.size) > 40
    assert not (tmp_path / "gallery" / "thumbs/bb/broken.jpg").exists()


def test_a_thumbnail_is_named_by_its_poster_path_only():
    assert thumbnail_key("/a/p.jpg") == thumbnail_key("/a/p.jpg") != thumbnail_key("/b/p.jpg")
    assert len(thumbnail_key("s3://bucket/p.jpg")) == 20
