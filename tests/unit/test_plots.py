"""Plots: training curves where the model directory names them, and the trials plot."""

from __future__ import annotations

from poster_ray.layout import ModelDir
from poster_ray.plots import plot_history, plot_trials
from poster_ray.storage import Location


def test_plot_history_writes_present_curves_only(tmp_path):
    history = {
        "precision": [0.2, 0.3, 0.4],
        "val_precision": [0.2, 0.25, 0.27],
        "loss": [0.5, 0.4, 0.3],
        "val_loss": [0.5, 0.45, 0.44],
    }
    model_dir = ModelDir(tmp_path / "curves")
    paths = plot_history(history, model_dir)
    assert [p.name for p in paths] == ["curve_precision.png", "curve_loss.png"]
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG")
    assert model_dir.curves() == paths[::-1]  # sorted by name
    assert not model_dir.curve("recall").exists() and not model_dir.curve("auc").exists()


def test_plot_trials_draws_every_status_and_skips_unscored_trials(tmp_path):
    trials = [
        {"trial": 1, "best": 0.30, "status": "completed"},
        {"trial": 2, "best": 0.25, "status": "stopped early"},
        {"trial": 3, "best": None, "status": "error"},
        {"trial": 4, "best": 0.35, "status": "completed"},
    ]
    path = plot_trials(trials, "val_pr_auc", True, Location.of(tmp_path / "trials.png"))
    assert path.read_bytes().startswith(b"\x89PNG") and path.size() > 1000
