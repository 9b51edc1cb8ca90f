"""The decoded cache read back: arrays and streamed splits agree with the manifest, and
hold the decoded posters' pixels; unreadable posters never reach a reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic import DIRTY_IMAGE_SIZE

from poster_ray.config import SPLITS, PreprocessSpec
from poster_ray.data.cache import load_split, read_split_arrays
from poster_ray.errors import PosterRayError
from poster_ray.images import read_and_decode
from poster_ray.layout import RunDir

SHAPE = (DIRTY_IMAGE_SIZE, DIRTY_IMAGE_SIZE, 3)


def test_read_split_arrays_agrees_with_the_manifest(dirty_run):
    root, run, _ = dirty_run
    manifest = pd.read_parquet(run.manifest).set_index("id")
    for split in SPLITS:
        ids, images, labels = read_split_arrays(run, split)
        expected = manifest[manifest["split"] == split]
        assert sorted(ids) == sorted(expected.index)
        assert images.shape == (len(ids), *SHAPE)
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(labels, np.stack(expected.loc[ids, "labels"].to_numpy()))
    # The cached pixels are the decoded poster.
    ids, images, _ = read_split_arrays(run, "train")
    poster = str(root / "Images" / f"{ids[0]}.jpg")
    pixels, error = read_and_decode(poster, PreprocessSpec(DIRTY_IMAGE_SIZE))
    assert error == ""
    np.testing.assert_array_equal(images[0], pixels)


def test_load_split_streams_uint8_images_and_manifest_labels(dirty_run):
    _, run, _ = dirty_run
    manifest = pd.read_parquet(run.manifest)
    train = manifest[manifest["split"] == "train"]
    rows = load_split(run, "train").take_all()
    assert len(rows) == len(train)
    assert all(row["image"].shape == SHAPE and row["image"].dtype == np.uint8 for row in rows)
    got = sorted(tuple(row["labels"].tolist()) for row in rows)
    assert got == sorted(tuple(labels.tolist()) for labels in train["labels"])


def test_load_split_without_cache_says_run_prepare(tmp_path):
    with pytest.raises(PosterRayError, match="poster-ray prepare"):
        load_split(RunDir(tmp_path), "train")
