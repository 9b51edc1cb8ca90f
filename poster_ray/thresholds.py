"""Threshold policies: how the validation posters become a bundle's decision thresholds.

Half the genres have 5-20 validation positives, so a threshold per genre picked on them
is noisy and can lose to one global threshold on posters it never saw. Three policies:
``per_genre`` (jointly for micro-F1, metrics.calibrate_micro_f1_thresholds), ``global``
(one threshold for all genres) and ``shrunk`` (each genre's threshold pulled toward the
global one, the more the fewer positives it has). ``auto`` picks among them by k-fold
cross-validation over the validation posters, then fits the winner on all of them.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold

from poster_ray import metrics
from poster_ray.config import AUTO_THRESHOLD_POLICY, THRESHOLD_POLICIES

# In order of preference on a tie: fewer free parameters first.
POLICIES = tuple(policy for policy in THRESHOLD_POLICIES if policy != AUTO_THRESHOLD_POLICY)
FOLDS = 5
SEED = 0
# A genre with this many validation positives sits halfway between its own threshold and
# the global one: about where a per-genre F1 estimate stops being mostly noise.
SHRINK_POSITIVES = 20


def fit_thresholds(policy: str, y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """One threshold per genre, by `policy` (one of POLICIES), fitted on these posters."""
    global_threshold = metrics.calibrate_global_threshold(y_true, y_prob)
    if policy == "global":
        return np.full(np.shape(y_true)[1], global_threshold)
    per_genre = metrics.calibrate_micro_f1_thresholds(y_true, y_prob)
    if policy == "per_genre":
        return per_genre
    positives = np.asarray(y_true).sum(axis=0)
    weight = positives / (positives + SHRINK_POSITIVES)
    return np.round(weight * per_genre + (1 - weight) * global_threshold, 4)


def cross_validated_micro_f1(
    policy: str, y_true: np.ndarray, y_prob: np.ndarray, folds: int = FOLDS, seed: int = SEED
) -> float:
    """Micro-F1 of `policy` on posters its thresholds were not fitted on: each fold scored
    with thresholds fitted on the others, the counts of all folds pooled."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    counts = np.zeros(3)
    for fitted, held_out in KFold(folds, shuffle=True, random_state=seed).split(y_true):
        cutoffs = fit_thresholds(policy, y_true[fitted], y_prob[fitted])
        predicted = y_prob[held_out] >= cutoffs
        counts += metrics.poster_counts(y_true[held_out], predicted).sum(axis=0)
    return float(metrics.micro_f1_from_counts(counts))


def choose_thresholds(
    requested: str, y_true: np.ndarray, y_prob: np.ndarray
) -> tuple[np.ndarray, dict]:
    """The thresholds of the `requested` policy (or, for ``auto``, of the policy that
    cross-validates best) fitted on all these posters, and what was chosen and why."""
    scores = {}
    if requested == AUTO_THRESHOLD_POLICY:
        folds = min(FOLDS, len(y_true))
        if folds < 2:  # nothing to cross-validate on: the policy with one parameter
            policy = "global"
        else:
            scores = {p: cross_validated_micro_f1(p, y_true, y_prob, folds) for p in POLICIES}
            policy = max(POLICIES, key=lambda p: scores[p])  # the first best, on a tie
    else:
        policy = requested
    described = {"requested": requested, "policy": policy}
    if scores:
        described.update(folds=folds, seed=SEED, cross_validated_micro_f1=scores)
    return fit_thresholds(policy, y_true, y_prob), described
