"""Metrics checked against numbers worked out by hand on a 4-poster, 3-genre example, and
the Markdown reports (poster_ray.reports) that show them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poster_ray.metrics import (
    baseline_metrics,
    calibrate_micro_f1_thresholds,
    calibrate_thresholds,
    classification_metrics,
    constant_top_k_baseline,
    frequency_baseline,
    nothing_baseline,
)
from poster_ray.reports import comparison_table, markdown_report

GENRES = ["Action", "Comedy", "Drama"]
# Columns A(ction), C(omedy), D(rama); 6 ones out of 12 cells: label density 0.5.
Y_TRUE = np.array(
    [
        [1, 0, 1],
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 1],
    ]
)
# At 0.5 the predictions are [1,0,0], [1,1,0], [1,0,0], [0,0,1].
Y_PROB = np.array(
    [
        [0.9, 0.2, 0.4],
        [0.6, 0.7, 0.1],
        [0.8, 0.3, 0.2],
        [0.1, 0.4, 0.7],
    ]
)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return classification_metrics(Y_TRUE, Y_PROB, 0.5, GENRES)


def test_micro_scores(metrics):
    # Per genre (TP, FP, FN): A (2, 1, 0), C (1, 0, 1), D (1, 0, 1) -> total (4, 1, 2).
    # P = 4/5, R = 4/6, F1 = 2*4 / (2*4 + 1 + 2) = 8/11.
    assert metrics["micro"]["precision"] == pytest.approx(4 / 5)
    assert metrics["micro"]["recall"] == pytest.approx(2 / 3)
    assert metrics["micro"]["f1"] == pytest.approx(8 / 11)


def test_macro_and_weighted_scores(metrics):
    # F1 per genre: A 2*2/(4+1) = 4/5, C 2/(2+1) = 2/3, D 2/3 -> mean (4/5 + 4/3) / 3 = 32/45.
    # P per genre 2/3, 1, 1 -> 8/9; R per genre 1, 1/2, 1/2 -> 2/3.
    assert metrics["macro"]["f1"] == pytest.approx(32 / 45)
    assert metrics["macro"]["precision"] == pytest.approx(8 / 9)
    assert metrics["macro"]["recall"] == pytest.approx(2 / 3)
    # Every genre has support 2, so weighting changes nothing.
    assert metrics["weighted"]["f1"] == pytest.approx(32 / 45)


def test_macro_f1_over_present_genres_leaves_out_a_genre_with_no_positives():
    # Comedy gets no positives: sklearn's macro counts its F1 as 0 (Action 4/5 and
    # Drama 2/3 from test_macro_and_weighted_scores, Comedy 0 -> 22/45); over the genres
    # present it is (4/5 + 2/3) / 2 = 11/15.
    y_true = Y_TRUE.copy()
    y_true[:, 1] = 0
    y_prob = Y_PROB.copy()
    y_prob[:, 1] = 0.0
    scored = classification_metrics(y_true, y_prob, 0.5, GENRES)
    assert scored["macro"]["f1"] == pytest.approx(22 / 45)
    assert scored["macro_f1_present"] == pytest.approx(11 / 15)


def test_samples_f1_and_hamming(metrics):
    # Rows: {A,D} vs {A} -> 2/3; {C} vs {A,C} -> 2/3; {A,C} vs {A} -> 2/3; {D} vs {D} -> 1.
    # Mean (3 * 2/3 + 1) / 4 = 3/4.
    assert metrics["samples"]["f1"] == pytest.approx(3 / 4)
    # Wrong cells: row 0 Drama, row 1 Action, row 2 Comedy -> 3 of 12.
    assert metrics["hamming_loss"] == pytest.approx(3 / 12)


def test_ranking_scores(metrics):
    # Action: positives 0.9, 0.8 above negatives 0.6, 0.1 -> AP 1, AUC 1.
    # Comedy: ranking 0.7(+) 0.4(-) 0.3(+) 0.2(-) -> AP (1 + 2/3) / 2 = 5/6; AUC 3 of 4 pairs.
    # Drama: positives 0.7, 0.4 above 0.2, 0.1 -> AP 1, AUC 1.
    ap = [row["ap"] for row in metrics["per_genre"]]
    auc = [row["roc_auc"] for row in metrics["per_genre"]]
    assert ap == pytest.approx([1, 5 / 6, 1])
    assert auc == pytest.approx([1, 3 / 4, 1])
    assert metrics["map"] == pytest.approx((1 + 5 / 6 + 1) / 3)
    assert metrics["roc_auc"] == pytest.approx((1 + 3 / 4 + 1) / 3)
    # All 12 cells ranked: 0.9+ 0.8+ 0.7++ | 0.6- | 0.4+- | 0.3+ | ...
    # Recall steps x precision: 4/6 * 1 + 1/6 * 5/7 + 1/6 * 6/8 = 51/56.
    assert metrics["micro_ap"] == pytest.approx(51 / 56)


def test_per_genre_table_and_json(metrics):
    action = metrics["per_genre"][0]
    assert action["genre"] == "Action"
    assert action["support"] == 2
    assert action["threshold"] == 0.5
    assert action["precision"] == pytest.approx(2 / 3)
    assert action["recall"] == pytest.approx(1)
    assert json.loads(json.dumps(metrics)) == metrics


def test_per_genre_thresholds_array_matches_scalar(metrics):
    as_array = classification_metrics(Y_TRUE, Y_PROB, np.full(3, 0.5), GENRES)
    assert as_array == metrics


def test_calibrated_thresholds_pick_the_obvious_cut():
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    # Genre 0: positives score 0.35, 0.30 and negatives 0.10, 0.05 -> cut at 0.30 (F1 1).
    # Genre 1: positives 0.9, 0.6 and negatives 0.2, 0.7; best F1 is predicting 0.9, 0.7,
    #          0.6 (P 2/3, R 1, F1 4/5) vs 0.9 alone (F1 2/3) -> cut at 0.6.
    # Genre 2: no positives -> keeps the default.
    y_prob = np.array([[0.35, 0.2, 0.9], [0.30, 0.9, 0.1], [0.10, 0.6, 0.4], [0.05, 0.7, 0.3]])
    thresholds = calibrate_thresholds(y_true, y_prob, default=0.42)
    assert thresholds == pytest.approx([0.30, 0.6, 0.42])

    metrics = classification_metrics(y_true, y_prob, thresholds, GENRES)
    assert metrics["per_genre"][0]["f1"] == pytest.approx(1)
    assert metrics["per_genre"][1]["f1"] == pytest.approx(4 / 5)
    assert metrics["per_genre"][2]["threshold"] == pytest.approx(0.42)
    assert metrics["per_genre"][2]["ap"] is None
    assert metrics["per_genre"][2]["roc_auc"] is None


def test_calibration_is_fast_enough_for_a_real_split():
    rng = np.random.default_rng(0)
    y_true = (rng.random((1000, 24)) < 0.1).astype(int)
    y_prob = np.clip(0.3 * y_true + rng.random((1000, 24)) * 0.7, 0, 1)
    thresholds = calibrate_thresholds(y_true, y_prob)
    assert thresholds.shape == (24,)
    assert np.all((thresholds > 0) & (thresholds <= 1))


# Training frequencies: Action 1/4, Comedy 2/4, Drama 3/4.
TRAIN = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]])


def test_constant_baseline_answers_the_two_most_frequent_genres():
    scores = constant_top_k_baseline(TRAIN, n_rows=5)
    assert scores.shape == (5, 3)
    assert np.all(scores == [0.0, 1.0, 1.0])


def test_nothing_baseline_hamming_equals_label_density():
    scores = nothing_baseline(4, 3)
    metrics = classification_metrics(Y_TRUE, scores, 0.5, GENRES)
    assert metrics["hamming_loss"] == pytest.approx(Y_TRUE.mean())  # 6 / 12
    assert metrics["micro"]["f1"] == 0


def test_frequency_baseline_scores_are_training_frequencies():
    scores = frequency_baseline(TRAIN, n_rows=4)
    assert np.allclose(scores, [[0.25, 0.5, 0.75]] * 4)


def test_baseline_metrics_names_and_scores():
    baselines = baseline_metrics(TRAIN, Y_TRUE, GENRES)
    assert list(baselines) == ["always Drama, Comedy", "nothing", "training frequencies"]
    # Comedy and Drama on every row vs Y_TRUE: TP 2 + 2 = 4, FP 2 + 2 = 4, FN 2 (Action) -> P 1/2.
    assert baselines["always Drama, Comedy"]["micro"]["precision"] == pytest.approx(1 / 2)
    # Frequencies score Drama 0.75 >= 0.5 and Comedy 0.5 >= 0.5: same answers as constant.
    assert baselines["training frequencies"]["micro"] == baselines["always Drama, Comedy"]["micro"]


def test_markdown_report_has_table_baselines_and_images(metrics):
    baselines = baseline_metrics(TRAIN, Y_TRUE, GENRES)
    thresholds = calibrate_thresholds(Y_TRUE, Y_PROB)
    models = {
        "model @ 0.5": metrics,
        "model @ calibrated": classification_metrics(Y_TRUE, Y_PROB, thresholds, GENRES),
    }
    images = ["curve_precision.png", "curve_loss.png"]
    report = markdown_report(models, baselines, GENRES, images)

    assert comparison_table({**models, **baselines}) in report
    assert (
        "| run | micro P | micro R | micro F1 | macro F1 | macro F1 (present) | samples F1 |"
        in report
    )
    for name in [*models, *baselines]:
        assert f"| {name} |" in report
    assert "![curve_precision](curve_precision.png)" in report
    assert "![curve_loss](curve_loss.png)" in report
    assert "| genre | precision | recall | f1 | support | ap | roc_auc | threshold |" in report
    # Hand value from test_micro_scores, rounded to 3 decimals.
    assert "| 0.800 | 0.667 | 0.727 |" in report


def test_comparison_table_formats_none_as_na(metrics):
    no_ranking = {**metrics, "micro_ap": None, "map": None, "roc_auc": None}
    table = comparison_table({"run": no_ranking})
    assert table.rstrip().endswith("| 0.250 | n/a | n/a | n/a |")


def test_comparison_table_gives_model_rows_their_difference_and_verdict(metrics):
    difference = {"difference": 0.08, "low": 0.05, "high": 0.11, "verdict": "beats"}
    table = comparison_table(
        {"model": metrics, "always Drama": metrics}, {"model": difference}, "always Drama"
    )
    header, _, model, baseline = table.splitlines()
    assert header.endswith("| micro F1 - always Drama [interval] | verdict |")
    assert model.endswith("| +0.080 [+0.050, +0.110] | beats |")
    assert baseline.endswith("| 0.917 |  |  |")


def test_micro_f1_calibration_silences_a_rare_genre_that_only_adds_false_positives():
    # Genre A separates perfectly above 0.2; genre B's one positive scores lowest, so its
    # own best-F1 cut-off (0.3) predicts B everywhere: TP 1, FP 5 for B. Micro-F1 with A
    # perfect (TP 4): with B predicted 10/15 = 0.667, with B never predicted 8/9 = 0.889.
    y_true = np.array([[1, 1], [1, 0], [1, 0], [1, 0], [0, 0], [0, 0]])
    y_prob = np.array([[0.9, 0.3], [0.8, 0.35], [0.7, 0.4], [0.6, 0.45], [0.2, 0.5], [0.1, 0.55]])
    assert calibrate_thresholds(y_true, y_prob)[1] == pytest.approx(0.3)
    thresholds = calibrate_micro_f1_thresholds(y_true, y_prob)
    assert 0.2 < thresholds[0] <= 0.6
    assert thresholds[1] > 0.55
