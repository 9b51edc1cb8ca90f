"""The run report: the posters it ranks, and the page it writes from a finished run."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from report_support import MODEL, WRONG_GENRE, make_finished_run
from synthetic import GENRES

from poster_ray.layout import RunDir
from poster_ray.report import write_report
from poster_ray.report.posters import poster_losses, ranked_posters


def test_a_confident_miss_costs_more_than_a_hesitant_one():
    labels = np.array([[1, 0], [1, 0]], dtype=np.float32)
    losses = poster_losses(labels, np.array([[0.1, 0.9], [0.4, 0.5]]))
    assert losses[0] > losses[1] > 0
    assert np.isfinite(poster_losses(labels, np.array([[0.0, 1.0], [1.0, 0.0]]))).all()


def test_ranked_posters_put_the_confident_miss_first_and_name_the_predicted_genres():
    manifest = pd.DataFrame(
        {"id": ["a", "b", "c"], "path": ["a.jpg", "b.jpg", "c.jpg"],
         "labels": [np.array([1, 0]), np.array([1, 0]), np.array([0, 1])]}
    )  # fmt: skip
    predictions = pd.DataFrame(
        {"id": ["a", "b", "c"],
         "probabilities": [np.array([0.9, 0.1]), np.array([0.05, 0.97]), np.array([0.4, 0.6])]}
    )  # fmt: skip
    ranked = ranked_posters(predictions, manifest, ["x", "y"], np.array([0.5, 0.5]), count=2)
    assert [p["id"] for p in ranked["most wrong"]] == ["b", "c"]
    assert [p["id"] for p in ranked["most right"]] == ["a", "c"]
    wrong = ranked["most wrong"][0]
    assert wrong["true"] == ["x"]
    assert wrong["predicted"] == [("y", np.float32(0.97).item())]


def test_run_report_shows_comparison_curves_genres_trials_and_posters(tmp_path):
    run = RunDir(make_finished_run(tmp_path, test_posters=6))
    page = write_report(run.root.uri)
    assert page == run.report and page.is_file()
    html = page.read_text()
    assert "baseline: always Drama, Comedy" in html
    assert f"<h2 id='{MODEL}'>" in html
    assert html.count("<img alt='curve_loss.png' src='data:image/png;base64,") == 1
    assert "Tuning trials" in html and "<img alt='trials'" in html
    for genre in GENRES:  # the per-genre table, with support
        assert f"<td>{genre}</td>" in html
    # Six test posters: the most wrong and most right lists hold all six each, embedded.
    assert html.count("<div class='poster'>") == 12
    wrong = html.split("gets most wrong")[1].split("gets most right")[0]
    first = re.search(r"<b>(tt\d+)</b>", wrong)[1]
    assert first == "tt0000001"
    assert f"<span class='miss'>{GENRES[WRONG_GENRE]} 0.95</span>" in wrong
    right = html.split("gets most right")[1]
    assert re.search(r"<b>(tt\d+)</b>", right)[1] == "tt0000000"
    # Nothing that would leave the page.
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", html)


def test_a_model_evaluated_before_test_predictions_were_kept_says_how_to_get_them(tmp_path):
    run = RunDir(make_finished_run(tmp_path))
    run.model(MODEL).test_predictions.remove()
    html = write_report(run.root.uri).read_text()
    assert "poster-ray evaluate" in html and "<div class='poster'>" not in html


def test_report_of_a_folder_that_is_neither_names_it(tmp_path, capsys):
    from poster_ray.cli import main

    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "manifest.parquet" in error and "_job.json" in error
    assert "Traceback" not in error
