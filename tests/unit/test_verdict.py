"""The paired bootstrap behind every verdict: constructed cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from poster_ray.metrics import micro_f1_from_counts, poster_counts
from poster_ray.verdict import (
    BEATS,
    CANNOT_TELL,
    WORSE,
    format_interval,
    micro_f1_difference,
    verdict_of,
)

RNG = np.random.default_rng(7)
TRUTH = (RNG.random((300, 6)) < 0.3).astype(int)


def noisy(truth: np.ndarray, flip: float, seed: int) -> np.ndarray:
    """`truth` with a fraction `flip` of its cells flipped."""
    flips = np.random.default_rng(seed).random(truth.shape) < flip
    return np.where(flips, 1 - truth, truth)


def test_counts_give_sklearns_micro_f1():
    from sklearn.metrics import f1_score

    predicted = noisy(TRUTH, 0.2, seed=1)
    counts = poster_counts(TRUTH, predicted).sum(axis=0)
    assert micro_f1_from_counts(counts) == pytest.approx(
        f1_score(TRUTH, predicted, average="micro")
    )


def test_a_clear_win_beats_the_baseline():
    result = micro_f1_difference(TRUTH, noisy(TRUTH, 0.05, 1), noisy(TRUTH, 0.4, 2))
    assert result["verdict"] == BEATS
    assert 0 < result["low"] < result["difference"] < result["high"]


def test_a_clear_loss_is_worse():
    result = micro_f1_difference(TRUTH, noisy(TRUTH, 0.4, 2), noisy(TRUTH, 0.05, 1))
    assert result["verdict"] == WORSE and result["high"] < 0


def test_identical_predictions_cannot_be_told_apart():
    predicted = noisy(TRUTH, 0.2, seed=3)
    result = micro_f1_difference(TRUTH, predicted, predicted)
    # Paired: every resample scores both on the same posters, so each difference is 0.
    assert (result["difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)
    assert result["verdict"] == CANNOT_TELL


def test_one_poster_better_cannot_be_told_apart():
    """The quick profile's case: 0.420 against 0.419, a real but tiny edge."""
    baseline = noisy(TRUTH, 0.2, seed=4)
    model = baseline.copy()
    model[0] = TRUTH[0]
    result = micro_f1_difference(TRUTH, model, baseline)
    assert result["difference"] > 0
    # Over a third of the resamples leave poster 0 out, and there the two are equal.
    assert result["low"] == 0 < result["high"]
    assert result["verdict"] == CANNOT_TELL


def test_the_fixed_seed_makes_the_interval_reproducible():
    model, baseline = noisy(TRUTH, 0.15, 5), noisy(TRUTH, 0.2, 6)
    first = micro_f1_difference(TRUTH, model, baseline)
    assert micro_f1_difference(TRUTH, model, baseline) == first
    other_seed = micro_f1_difference(TRUTH, model, baseline, seed=1)
    assert other_seed["difference"] == first["difference"]
    assert (other_seed["low"], other_seed["high"]) != (first["low"], first["high"])


def test_the_interval_narrows_with_more_posters():
    truth = (np.random.default_rng(8).random((3000, 6)) < 0.3).astype(int)
    model, baseline = noisy(truth, 0.15, 5), noisy(truth, 0.2, 6)
    few = micro_f1_difference(truth[:300], model[:300], baseline[:300])
    many = micro_f1_difference(truth, model, baseline)
    assert many["high"] - many["low"] < 0.6 * (few["high"] - few["low"])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.01, 0.05, BEATS),
        (-0.01, 0.05, CANNOT_TELL),
        (0.0, 0.02, CANNOT_TELL),
        (-0.05, -0.01, WORSE),
    ],
)
def test_beats_only_when_the_whole_interval_is_above_zero(low, high, expected):
    assert verdict_of(low, high) == expected


def test_the_interval_prints_signed():
    assert format_interval({"difference": 0.08, "low": -0.0123, "high": 0.1}) == (
        "+0.080 [-0.012, +0.100]"
    )
