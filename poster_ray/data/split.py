"""The 70/15/15 split: stratified over all genres at once, every genre in every split.

One row per poster id reaches this point (labels.clean_labels), so no poster can be
in two splits.
"""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from poster_ray.config import SPLIT_FRACTIONS, SPLITS
from poster_ray.errors import PosterRayError


def split_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """Assign each row to train/val/test (70/15/15) by iterative stratification."""
    if len(labels) < 10:
        raise PosterRayError(f"only {len(labels)} usable posters: at least 10 are needed to split")
    rest_fraction = 1.0 - SPLIT_FRACTIONS["train"]
    test_share_of_rest = SPLIT_FRACTIONS["test"] / rest_fraction
    assignment = np.full(len(labels), "train", dtype=object)
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=rest_fraction, random_state=seed)
    _, rest = next(first.split(np.zeros(len(labels)), labels))
    second = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=test_share_of_rest, random_state=seed
    )
    val_in_rest, test_in_rest = next(second.split(np.zeros(len(rest)), labels[rest]))
    assignment[rest[val_in_rest]] = "val"
    assignment[rest[test_in_rest]] = "test"
    return spread_rare_genres(labels, assignment)


def spread_rare_genres(
    labels: np.ndarray, assignment: np.ndarray, min_count: int = 3
) -> np.ndarray:
    """Move single posters so every genre with >= min_count posters is in every split.

    Iterative stratification sends a 3-poster genre 2/1/0, leaving it unmeasurable in
    one split; a poster moves from the split richest in that genre, choosing one whose
    other genres stay present in its old split.
    """
    assignment = assignment.copy()
    for genre in np.flatnonzero(labels.sum(axis=0) >= min_count):
        for split in SPLITS:
            counts = {name: int(labels[assignment == name, genre].sum()) for name in SPLITS}
            if counts[split] > 0:
                continue
            donor = max(counts, key=counts.get)
            in_donor = assignment == donor
            donor_counts = labels[in_donor].sum(axis=0)
            candidates = np.flatnonzero(in_donor & (labels[:, genre] == 1))
            # Prefer posters whose genres all have spares in the donor split.
            spare = [row for row in candidates if (donor_counts[labels[row] == 1] > 1).all()]
            assignment[(spare or list(candidates))[0]] = split
    return assignment
