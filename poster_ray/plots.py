"""Plots for people: training curves and tuning trials, as PNGs on any storage.

Bare matplotlib Figures, not pyplot: no global backend state changes in the process.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from poster_ray.layout import ModelDir
from poster_ray.storage import Location

# Keras history keys plotted by plot_history, each against its "val_" twin.
CURVE_METRICS = ("precision", "recall", "auc", "pr_auc", "loss")


def plot_history(history: dict[str, list[float]], model_dir: ModelDir) -> list[Location]:
    """Train vs validation curves per epoch, one `ModelDir.curve` per metric present.

    These are the seed report's diagnostics (a widening train/validation gap is
    overfitting).
    """
    written = []
    for metric in CURVE_METRICS:
        if metric not in history:
            continue
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history:
                values = history[key]
                axes.plot(range(1, len(values) + 1), values, marker="o", label=label)
        axes.set_title(f"{metric} per epoch")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(metric)
        axes.legend()
        figure.tight_layout()
        path = model_dir.curve(metric)
        save_figure(figure, path)
        written.append(path)
    return written


def save_figure(figure: Figure, location: Location) -> None:
    """A PNG of `figure` at `location`, on any storage."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    Location.of(location).write_bytes(buffer.getvalue())


def plot_trials(
    trials: list[dict], objective: str, higher_is_better: bool, path: Location
) -> Location:
    """Each tuning trial's best objective in the order the searcher proposed them, with
    the best so far as a line: how fast the search found what it found."""
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    scored = [trial for trial in trials if trial["best"] is not None and np.isfinite(trial["best"])]
    for status, marker in (("completed", "o"), ("stopped early", "x"), ("error", "s")):
        points = [(trial["trial"], trial["best"]) for trial in scored if trial["status"] == status]
        if points:
            axes.scatter(*zip(*points, strict=True), marker=marker, label=status)
    if scored:
        values = [trial["best"] for trial in scored]
        running = (
            np.maximum.accumulate(values) if higher_is_better else np.minimum.accumulate(values)
        )
        axes.step([trial["trial"] for trial in scored], running, where="post", label="best so far")
    axes.set_title(f"{objective} per trial (best epoch)")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(objective)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)
    return path
