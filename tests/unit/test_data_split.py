"""The 70/15/15 split: proportions, every genre of 3+ posters in every split, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from paths import REAL_DATA
from synthetic import REAL_GENRES

from poster_ray.config import SPLITS
from poster_ray.data.labels import clean_labels, read_checked_csv
from poster_ray.data.split import split_rows
from poster_ray.errors import PosterRayError
from poster_ray.storage import Location


def label_matrix(n: int, seed: int, rare_counts=(3, 4, 5, 1)) -> np.ndarray:
    """Common genres at several densities plus genres with exactly `rare_counts` ones."""
    rng = np.random.default_rng(seed)
    common = (rng.random((n, 5)) < [0.4, 0.3, 0.25, 0.15, 0.08]).astype(np.uint8)
    rare = np.zeros((n, len(rare_counts)), dtype=np.uint8)
    for column, count in enumerate(rare_counts):
        rare[rng.choice(n, size=count, replace=False), column] = 1
    labels = np.concatenate([common, rare], axis=1)
    labels[labels.sum(axis=1) == 0, 0] = 1
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_proportions(seed):
    assignment = split_rows(label_matrix(400, seed), seed)
    assert set(assignment) == set(SPLITS)
    for split, fraction in {"train": 0.70, "val": 0.15, "test": 0.15}.items():
        assert abs((assignment == split).mean() - fraction) <= 0.03, split


@pytest.mark.parametrize("n", [30, 60, 400])
@pytest.mark.parametrize("seed", range(5))
def test_genres_with_three_or_more_posters_are_in_every_split(n, seed):
    labels = label_matrix(n, seed)
    assignment = split_rows(labels, seed)
    for genre in np.flatnonzero(labels.sum(axis=0) >= 3):
        for split in SPLITS:
            assert labels[assignment == split, genre].sum() > 0, (genre, split)


def test_split_is_deterministic_for_a_seed():
    labels = label_matrix(200, 0)
    first = split_rows(labels, 7)
    np.testing.assert_array_equal(first, split_rows(labels, 7))
    assert (first != split_rows(labels, 8)).any()


def test_one_poster_genre_and_empty_genre_do_not_break_the_split():
    labels = label_matrix(40, 3, rare_counts=(1, 0))
    assignment = split_rows(labels, 0)
    assert len(assignment) == 40
    assert set(assignment) == set(SPLITS)


def test_fewer_than_ten_rows_is_a_user_error():
    with pytest.raises(PosterRayError, match="only 9 usable posters"):
        split_rows(label_matrix(9, 0, rare_counts=()), 0)


@pytest.mark.skipif(not (REAL_DATA / "train.csv").is_file(), reason="no local copy of the dataset")
def test_real_csv_has_24_genres_and_splits_70_15_15():
    frame, genres = read_checked_csv(Location.of(REAL_DATA / "train.csv"))
    assert genres == REAL_GENRES
    kept, dropped = clean_labels(frame, genres)
    unique_ids = frame.loc[frame["N/A"] != "1", "Id"].nunique()
    assert len(kept) == unique_ids
    assert set(dropped["reason"]) <= {"flagged N/A", "duplicate id"}

    assignment = split_rows(kept[genres].to_numpy(dtype=np.uint8), 42)
    for split, fraction in {"train": 0.70, "val": 0.15, "test": 0.15}.items():
        assert abs((assignment == split).mean() - fraction) < 0.01, split
    # One row per id, so no poster can be in two splits.
    assert kept["Id"].is_unique
    ids_per_split = pd.DataFrame({"id": kept["Id"], "split": assignment}).groupby("id")["split"]
    assert (ids_per_split.nunique() == 1).all()
