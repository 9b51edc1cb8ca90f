"""Threshold policies on constructed validation splits whose best policy is known."""

from __future__ import annotations

import numpy as np
import pytest

from poster_ray.metrics import calibrate_global_threshold, calibrate_micro_f1_thresholds
from poster_ray.thresholds import (
    SHRINK_POSITIVES,
    choose_thresholds,
    cross_validated_micro_f1,
    fit_thresholds,
)


def separable_at_different_cut_offs(n: int = 400, seed: int = 0):
    """Genre A's positives score 0.25-0.3 (negatives below 0.2), genre B's 0.9-1.0
    (negatives 0.5-0.85): a threshold per genre separates both, no single one does."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, 2)) < 0.5).astype(int)
    a = np.where(truth[:, 0], rng.uniform(0.25, 0.3, n), rng.uniform(0.0, 0.2, n))
    b = np.where(truth[:, 1], rng.uniform(0.9, 1.0, n), rng.uniform(0.5, 0.85, n))
    return truth, np.stack([a, b], axis=1)


def rare_exchangeable_genres(n: int = 150, genres: int = 10, seed: int = 0):
    """Genres alike in every way but with about 6 positives each: any difference between
    their fitted thresholds is noise."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, genres)) < 0.04).astype(int)
    scores = np.where(truth, rng.uniform(0.2, 0.9, truth.shape), rng.uniform(0.0, 0.6, truth.shape))
    return truth, scores


def test_global_is_one_threshold_for_every_genre():
    truth, scores = separable_at_different_cut_offs()
    thresholds = fit_thresholds("global", truth, scores)
    assert thresholds.tolist() == [calibrate_global_threshold(truth, scores)] * 2


def test_per_genre_is_the_joint_micro_f1_calibration():
    truth, scores = separable_at_different_cut_offs()
    np.testing.assert_array_equal(
        fit_thresholds("per_genre", truth, scores), calibrate_micro_f1_thresholds(truth, scores)
    )


def test_shrinking_pulls_a_genre_toward_global_by_its_positives():
    truth, scores = separable_at_different_cut_offs(n=60)
    truth[:, 1] = 0  # genre B: no positives, so nothing to pull it away from global
    truth[:SHRINK_POSITIVES, 0], truth[SHRINK_POSITIVES:, 0] = 1, 0  # A: exactly 20
    per_genre = fit_thresholds("per_genre", truth, scores)
    global_threshold = fit_thresholds("global", truth, scores)[0]
    shrunk = fit_thresholds("shrunk", truth, scores)
    assert shrunk[0] == pytest.approx((per_genre[0] + global_threshold) / 2, abs=1e-4)
    assert shrunk[1] == pytest.approx(global_threshold)


def test_auto_keeps_per_genre_thresholds_where_genres_need_them():
    truth, scores = separable_at_different_cut_offs()
    thresholds, chosen = choose_thresholds("auto", truth, scores)
    cv = chosen["cross_validated_micro_f1"]
    assert cv["per_genre"] == pytest.approx(1.0) and cv["global"] < 0.9
    assert chosen["policy"] == "per_genre"
    np.testing.assert_array_equal(thresholds, fit_thresholds("per_genre", truth, scores))


def test_auto_prefers_a_global_threshold_when_per_genre_ones_fit_noise():
    truth, scores = rare_exchangeable_genres()
    thresholds, chosen = choose_thresholds("auto", truth, scores)
    cv = chosen["cross_validated_micro_f1"]
    assert cv["global"] > cv["per_genre"]
    assert chosen["policy"] == max(cv, key=cv.get) != "per_genre"
    assert (chosen["folds"], chosen["requested"]) == (5, "auto")
    np.testing.assert_array_equal(thresholds, fit_thresholds(chosen["policy"], truth, scores))


def test_cross_validation_scores_held_out_posters_only():
    """Per-genre thresholds score better on the posters they were fitted on than on
    held-out ones: the optimism cross-validation removes."""
    truth, scores = rare_exchangeable_genres()
    in_sample = fit_thresholds("per_genre", truth, scores)
    predicted = scores >= in_sample
    tp = (predicted & truth.astype(bool)).sum()
    fitted_f1 = 2 * tp / (predicted.sum() + truth.sum())
    assert cross_validated_micro_f1("per_genre", truth, scores) < fitted_f1 - 0.03
    assert cross_validated_micro_f1("per_genre", truth, scores) == cross_validated_micro_f1(
        "per_genre", truth, scores
    )


def test_a_named_policy_is_used_as_it_is():
    truth, scores = rare_exchangeable_genres()
    thresholds, chosen = choose_thresholds("per_genre", truth, scores)
    assert chosen == {"requested": "per_genre", "policy": "per_genre"}
    np.testing.assert_array_equal(thresholds, fit_thresholds("per_genre", truth, scores))


def test_one_validation_poster_gets_the_global_threshold():
    thresholds, chosen = choose_thresholds("auto", np.array([[1, 0]]), np.array([[0.7, 0.2]]))
    assert chosen["policy"] == "global" and thresholds[0] == thresholds[1]
